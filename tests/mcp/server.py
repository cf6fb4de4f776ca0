"""A small MCP server for Portcullis's integration tests (the official `mcp` SDK, 2.x).

Usage:
    .venv/bin/python tests/mcp/server.py PORT CALL_LOG [--json] [--stateless] [--extra-tools N]

Serves MCP over Streamable HTTP on http://127.0.0.1:PORT/mcp until killed.

- Answers with SSE (`text/event-stream`, the SDK's default) unless `--json`, which makes it
  answer every POST with one `application/json` body (`json_response=True`).
- Stateful by default: `initialize` is answered with an `Mcp-Session-Id` that later requests
  must carry. `--stateless` serves every POST on its own (no session id). Clients that speak
  the 2026-07-28 revision (`server/discover`, no handshake) are served either way: the SDK
  runs that revision's single-exchange path for them.
- DNS-rebinding protection is off, so the server accepts any `Host` (the gateway may reach it
  under another name).
- Tools: send_message(channel_id, text), list_channels(), delete_channel(channel_id),
  read_file(path) (a canned answer: it reads nothing from disk), plus `--extra-tools N`
  filler tools named extra_tool_0 .. extra_tool_{N-1} for large `tools/list` answers.
- Every tool call the server executes is appended to CALL_LOG as one JSON line,
  `{"tool": NAME, "args": {...}}`, before the tool answers: a test reads it to assert that a
  denied call never reached the server.
- Once listening it prints `listening on PORT` to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

CHANNELS = ["C_GENERAL", "C_RANDOM", "C_SECRET"]


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP test server (Streamable HTTP)")
    parser.add_argument("port", type=int)
    parser.add_argument("call_log")
    parser.add_argument("--json", action="store_true", help="answer with application/json, not SSE")
    parser.add_argument("--stateless", action="store_true", help="no sessions")
    parser.add_argument("--extra-tools", type=int, default=0, metavar="N")
    options = parser.parse_args()

    def record(tool: str, args: dict[str, object]) -> None:
        with open(options.call_log, "a", encoding="utf-8") as log:
            log.write(json.dumps({"tool": tool, "args": args}) + "\n")

    server = MCPServer("portcullis-test-server", log_level="WARNING")

    @server.tool(description="Post a message to a channel.")
    def send_message(channel_id: str, text: str) -> str:
        record("send_message", {"channel_id": channel_id, "text": text})
        return f"sent to {channel_id}: {text}"

    @server.tool(description="List the workspace's channels.")
    def list_channels() -> str:
        record("list_channels", {})
        return json.dumps(CHANNELS)

    @server.tool(description="Delete a channel.")
    def delete_channel(channel_id: str) -> str:
        record("delete_channel", {"channel_id": channel_id})
        return f"deleted {channel_id}"

    @server.tool(description="Read a file (a canned answer).")
    def read_file(path: str) -> str:
        record("read_file", {"path": path})
        return f"contents of {path}"

    def filler(name: str):  # type: ignore[no-untyped-def]
        def tool(value: str = "") -> str:
            record(name, {"value": value})
            return f"{name}: {value}"

        return tool

    for i in range(options.extra_tools):
        name = f"extra_tool_{i}"
        server.add_tool(filler(name), name=name, description=f"Filler tool number {i}.")

    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=options.json,
        stateless_http=options.stateless,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    class Announce(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
            await super().startup(sockets)
            print(f"listening on {options.port}", flush=True)

    config = uvicorn.Config(app, host="127.0.0.1", port=options.port, log_level="warning")
    Announce(config).run()


if __name__ == "__main__":
    sys.exit(main())
