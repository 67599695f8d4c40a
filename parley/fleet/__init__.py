"""The scale-out room: `parley signaling` in front of `parley worker` processes, through Redis.

Both ends of the wire live here side by side: `wire` (keys, messages, connections), `rpc_server` (a
worker's side: registration, heartbeats, its inbox), `host` (signaling's side: `RedisCallHost`, the fleet
as one `CallHost`), `monitor` (a worker's load) and `health` (a worker's /healthz, /readyz, /metrics).
It builds on parley.agent (the calls) and parley.signaling (the `CallHost` it implements); neither of
them imports it.
"""
