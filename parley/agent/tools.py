"""Function tools the model may call: plain Python functions, sync or async, registered by decorator.

    from parley.agent.tools import tool

    @tool
    def get_weather(city: str) -> dict:
        "Current weather for a city."
        ...

Each function's name, docstring and annotated parameters become its declaration in the session setup.
A module given with `parley serve --tools mypackage.tools` is imported, and every function it decorates
with `@tool` (from the default registry) is offered to the model (an agent profile's `tools` picks some).

A tool that wants to know whose call it serves declares a parameter annotated `CallContext`: it gets
the call's id, agent and variables, and the model never sees that parameter.

    @tool
    def lookup_order(context: CallContext) -> dict:
        "The caller's order."
        return orders.get(context.variables.get("order_id", ""))

On the 3.x Live models a call is NON_BLOCKING unless the tool says `@tool(blocking=True)`: the model
talks on while the tool runs, and the answer is spoken as `@tool(scheduling=...)` says: "WHEN_IDLE"
(the default: once the model is not speaking), "INTERRUPT" (at once) or "SILENT" (remembered only).
Vertex AI refuses `scheduling`, so it is left out there. On 2.5 models a tool is declared as it says,
or with the model's default (blocking) when it says nothing.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints, overload

from google.genai import types

logger = logging.getLogger(__name__)

_JSON_TYPES: dict[Any, str] = {
    str: "STRING",
    int: "INTEGER",
    float: "NUMBER",
    bool: "BOOLEAN",
    list: "ARRAY",
    dict: "OBJECT",
}


@dataclass(frozen=True)
class CallContext:
    """Whose call a tool serves: given to a tool parameter annotated with this class."""

    call_id: str
    agent: str = "default"
    variables: Mapping[str, str] = field(default_factory=dict)


def _context_parameters(function: Callable[..., Any]) -> list[str]:
    hints = get_type_hints(function)
    return [name for name in inspect.signature(function).parameters if hints.get(name) is CallContext]


SCHEDULING = ("WHEN_IDLE", "INTERRUPT", "SILENT")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolOptions:
    blocking: bool | None = None  # None: the model's default (3.x: NON_BLOCKING, 2.5: blocking)
    scheduling: str = "WHEN_IDLE"  # how a NON_BLOCKING call's answer is spoken


class ToolRegistry:
    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self._options: dict[str, ToolOptions] = {}

    @overload
    def register(self, function: F) -> F: ...
    @overload
    def register(
        self, function: None = None, *, blocking: bool | None = None, scheduling: str = "WHEN_IDLE"
    ) -> Callable[[F], F]: ...
    def register(
        self, function: F | None = None, *, blocking: bool | None = None, scheduling: str = "WHEN_IDLE"
    ) -> F | Callable[[F], F]:
        """`@tools.register` or `@tools.register(blocking=True, scheduling="INTERRUPT")`."""
        if scheduling not in SCHEDULING:
            raise ValueError(f"scheduling must be one of {', '.join(SCHEDULING)}, not {scheduling!r}")
        options = ToolOptions(blocking=blocking, scheduling=scheduling)

        def add(fn: F) -> F:
            self._functions[fn.__name__] = fn
            self._options[fn.__name__] = options
            return fn

        return add(function) if function is not None else add

    def blocking(self, name: str, family: str) -> bool:
        """Whether the model waits for this tool's answer on a model of `family` ("2.5" or "3.x")."""
        blocking = self._options.get(name, ToolOptions()).blocking
        return blocking if blocking is not None else family != "3.x"

    def scheduling(self, name: str, family: str, vertex: bool) -> types.FunctionResponseScheduling | None:
        """What a response says about when to speak it: only for NON_BLOCKING calls, never on Vertex AI."""
        if vertex or family != "3.x" or self.blocking(name, family):
            return None
        return types.FunctionResponseScheduling(self._options.get(name, ToolOptions()).scheduling)

    def __len__(self) -> int:
        return len(self._functions)

    def names(self) -> list[str]:
        return sorted(self._functions)

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """Only the named tools (KeyError for one not registered), with their options."""
        chosen = ToolRegistry()
        for name in names:
            options = self._options[name]
            chosen.register(blocking=options.blocking, scheduling=options.scheduling)(self._functions[name])
        return chosen

    def declarations(self, family: str = "2.5") -> list[types.FunctionDeclaration]:
        out = []
        for name, function in self._functions.items():
            declaration = _declaration(function)
            if family == "3.x" or self._options[name].blocking is not None:
                blocking = self.blocking(name, family)
                declaration.behavior = types.Behavior.BLOCKING if blocking else types.Behavior.NON_BLOCKING
            out.append(declaration)
        return out

    async def call(
        self, name: str, args: dict[str, Any], timeout_s: float, context: CallContext | None = None
    ) -> dict[str, Any]:
        """Run a tool; failures and timeouts become an `error` answer the model can speak about."""
        function = self._functions.get(name)
        if function is None:
            return {"error": f"no tool named {name!r}"}
        args = dict(args)
        for parameter in _context_parameters(function):
            args[parameter] = context  # never what the model sent under that name
        try:
            if inspect.iscoroutinefunction(function):
                result = await asyncio.wait_for(function(**args), timeout_s)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(function, **args), timeout_s)
        except TimeoutError:
            return {"error": f"{name} timed out after {timeout_s:g} s"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("tool %s failed: %r", name, exc)
            return {"error": f"{name} failed: {type(exc).__name__}"}
        return result if isinstance(result, dict) else {"result": result}


def _declaration(function: Callable[..., Any]) -> types.FunctionDeclaration:
    hints = get_type_hints(function)
    properties: dict[str, types.Schema] = {}
    required: list[str] = []
    for name, param in inspect.signature(function).parameters.items():
        if hints.get(name) is CallContext:
            continue  # Parley's to give, not the model's
        kind = _JSON_TYPES.get(hints.get(name, str), "STRING")
        properties[name] = types.Schema(type=types.Type(kind))
        if param.default is inspect.Parameter.empty:
            required.append(name)
    parameters = (
        types.Schema(type=types.Type.OBJECT, properties=properties, required=required) if properties else None
    )
    return types.FunctionDeclaration(
        name=function.__name__,
        description=inspect.cleandoc(function.__doc__ or function.__name__),
        parameters=parameters,
    )


default_registry = ToolRegistry()


@overload
def tool(function: F) -> F: ...
@overload
def tool(
    function: None = None, *, blocking: bool | None = None, scheduling: str = "WHEN_IDLE"
) -> Callable[[F], F]: ...
def tool(
    function: F | None = None, *, blocking: bool | None = None, scheduling: str = "WHEN_IDLE"
) -> F | Callable[[F], F]:
    """Offer `function` to the model in every call of this process: `@tool` or `@tool(blocking=True)`."""
    add = default_registry.register(blocking=blocking, scheduling=scheduling)
    return add(function) if function is not None else add


def load_tool_module(path: str) -> None:
    """Import a module whose `@tool` functions should be offered (`--tools mypackage.tools`)."""
    importlib.import_module(path)
