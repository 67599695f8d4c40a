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
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

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


class ToolRegistry:
    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}

    def register(self, function: Callable[..., Any]) -> Callable[..., Any]:
        self._functions[function.__name__] = function
        return function

    def __len__(self) -> int:
        return len(self._functions)

    def names(self) -> list[str]:
        return sorted(self._functions)

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """Only the named tools (KeyError for one not registered)."""
        chosen = ToolRegistry()
        for name in names:
            chosen.register(self._functions[name])
        return chosen

    def declarations(self) -> list[types.FunctionDeclaration]:
        return [_declaration(f) for f in self._functions.values()]

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


def tool(function: Callable[..., Any]) -> Callable[..., Any]:
    """Offer `function` to the model in every call of this process."""
    return default_registry.register(function)


def load_tool_module(path: str) -> None:
    """Import a module whose `@tool` functions should be offered (`--tools mypackage.tools`)."""
    importlib.import_module(path)
