"""A scripted MCP client for Portcullis's integration tests (the official `mcp` SDK, 2.x).

Usage:
    .venv/bin/python tests/mcp/client.py URL SCRIPT [--proxy PROXY_URL] [--token TOKEN]
        [--mode legacy|auto|2026-07-28] [--timeout SECONDS]

    e.g. tests/mcp/client.py http://127.0.0.1:8123/mcp \
        '[{"op":"list_tools"},{"op":"call","tool":"send_message","args":{"channel_id":"C_GENERAL","text":"hi"}}]' \
        --proxy http://127.0.0.1:10000 --token agent-token

Connects to the Streamable HTTP endpoint URL with the SDK's `Client`, through the HTTP proxy
PROXY_URL when given (plain HTTP: the request line carries the absolute URL), sending
`Proxy-Authorization: Bearer TOKEN` when --token is given. No proxy is taken from the
environment. `--mode` is the SDK's connect mode: `legacy` (the default here) is the
`initialize` handshake (protocol 2025-11-25, a session id when the server is stateful);
`auto` (the SDK's own default) first probes `server/discover` at 2026-07-28 and falls back to
the handshake; `2026-07-28` skips both and sends every request on its own.

SCRIPT is a JSON array of steps, run in order:
    {"op": "list_tools"}
    {"op": "call", "tool": NAME, "args": {...}}
    {"op": "raw", "body": JSON_VALUE_OR_STRING, "headers": {...}}   a POST of that body to URL,
        with the session's id and protocol version headers (a string body is sent as is)

Prints ONE JSON document to stdout:
    {"connect": {"ok": true, "protocol_version": ..., "http": [...]}
                 or {"ok": false, "error": ERROR, "http": [...]},
     "steps": [STEP_RESULT, ...],          (empty when connect failed)
     "close": {"http": [...]}}
where
    list_tools -> {"op", "tools": [names], "http": [...]}
    call       -> {"op", "tool", "result": {"content": [...], "is_error": bool}, "http": [...]}
                  or {"op", "tool", "error": ERROR, "http": [...]}
    raw        -> {"op", "status", "content_type", "body", "messages": [...], "http": [...]}
    ERROR      =  {"code", "message", "data", "id", "http_status"}: a JSON-RPC error (the SDK
                  raises MCPError). `id` is the id of the error object as it arrived on the wire
                  (null when the SDK made the error up itself, e.g. from a non-JSON-RPC 4xx
                  answer); `http_status` is the status of the POST that carried the request.
                  A step that timed out (the answer never correlated) has
                  {"timeout": true, ...}; any other exception {"exception": "Type: text"}.
    "http"     =  the HTTP exchanges made during the step, in order: {"method", "rpc" (the
                  JSON-RPC methods posted), "status", "content_type", "session" (whether an
                  Mcp-Session-Id was sent), "body" (the answer's text, truncated)}.

Exit status 0 whenever the script ran, whatever the gateway answered; 2 on a harness failure
(bad arguments or script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

BODY_LIMIT = 64 * 1024


class Recorder:
    """Every HTTP exchange the client makes, with the answer's bytes as they were read."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.session_id: str | None = None
        self.protocol_version: str | None = None

    def since(self, start: int) -> list[dict[str, Any]]:
        return [public(e) for e in self.exchanges[start:]]


def public(exchange: dict[str, Any]) -> dict[str, Any]:
    body = bytes(exchange["body"])
    text = body[:BODY_LIMIT].decode("utf-8", "replace")
    return {
        "method": exchange["method"],
        "rpc": exchange["rpc"],
        "status": exchange["status"],
        "content_type": exchange["content_type"],
        "session": exchange["session"],
        "body": text,
    }


def posted_methods(content: bytes) -> list[str]:
    try:
        value = json.loads(content)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    return [i["method"] for i in items if isinstance(i, dict) and isinstance(i.get("method"), str)]


class TeeStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, sink: bytearray) -> None:
        self.inner = inner
        self.sink = sink

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        async for chunk in self.inner:
            self.sink.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, inner: httpx2.AsyncBaseTransport, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        content = await request.aread()
        exchange: dict[str, Any] = {
            "method": request.method,
            "rpc": posted_methods(content) if request.method == "POST" else [],
            "status": None,
            "content_type": None,
            "session": "mcp-session-id" in request.headers,
            "body": bytearray(),
        }
        if "mcp-protocol-version" in request.headers:
            self.recorder.protocol_version = request.headers["mcp-protocol-version"]
        self.recorder.exchanges.append(exchange)
        response = await self.inner.handle_async_request(request)
        exchange["status"] = response.status_code
        exchange["content_type"] = response.headers.get("content-type")
        if "mcp-session-id" in response.headers:
            self.recorder.session_id = response.headers["mcp-session-id"]
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=TeeStream(response.stream, exchange["body"]),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def messages_in(body: bytes, content_type: str | None) -> list[Any]:
    """The JSON-RPC messages in an answer: the JSON body, or each SSE event's data."""
    text = body.decode("utf-8", "replace")
    if (content_type or "").lower().startswith("text/event-stream"):
        found = []
        for event in text.replace("\r\n", "\n").split("\n\n"):
            data = [line[5:].lstrip(" ") if line.startswith("data:") else None for line in event.split("\n")]
            payload = "\n".join(d for d in data if d is not None)
            if payload:
                try:
                    found.append(json.loads(payload))
                except ValueError:
                    found.append(payload)
        return found
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else [value]


def wire_error(recorder: Recorder, start: int, method: str) -> tuple[Any, int | None]:
    """The id of the JSON-RPC error answering the step's `method` POST, and that POST's status."""
    for exchange in reversed(recorder.exchanges[start:]):
        if exchange["method"] != "POST" or method not in exchange["rpc"]:
            continue
        for message in messages_in(bytes(exchange["body"]), exchange["content_type"]):
            if isinstance(message, dict) and "error" in message:
                return message.get("id"), exchange["status"]
        return None, exchange["status"]
    return None, None


def leaf(exc: BaseException) -> BaseException:
    """The exception inside anyio's task-group wrappers: an MCPError if there is one."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [leaf(e) for e in exc.exceptions]
    return next((e for e in leaves if isinstance(e, MCPError)), leaves[0])


def error_of(exc: BaseException, recorder: Recorder, start: int, method: str) -> dict[str, Any]:
    exc = leaf(exc)
    if isinstance(exc, MCPError):
        wire_id, status = wire_error(recorder, start, method)
        return {"code": exc.code, "message": exc.message, "data": exc.data, "id": wire_id, "http_status": status}
    _, status = wire_error(recorder, start, method)
    if isinstance(exc, TimeoutError):
        return {"timeout": True, "http_status": status}
    return {"exception": f"{type(exc).__name__}: {exc}", "http_status": status}


async def raw_post(http: httpx2.AsyncClient, url: str, step: dict[str, Any], recorder: Recorder) -> dict[str, Any]:
    body = step.get("body")
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    if recorder.session_id:
        headers["mcp-session-id"] = recorder.session_id
    if recorder.protocol_version:
        headers["mcp-protocol-version"] = recorder.protocol_version
    headers.update(step.get("headers") or {})
    response = await http.post(url, content=content, headers=headers)
    content_type = response.headers.get("content-type")
    return {
        "status": response.status_code,
        "content_type": content_type,
        "body": response.text[:BODY_LIMIT],
        "messages": messages_in(response.content, content_type),
    }


async def run_step(
    client: Client, http: httpx2.AsyncClient, url: str, step: dict[str, Any], recorder: Recorder, timeout: float
) -> dict[str, Any]:
    op = step["op"]
    out: dict[str, Any] = {"op": op}
    start = len(recorder.exchanges)
    try:
        with anyio.fail_after(timeout):
            if op == "list_tools":
                listing = await client.list_tools(cache_mode="bypass")
                out["tools"] = [tool.name for tool in listing.tools]
            elif op == "call":
                out["tool"] = step["tool"]
                result = await client.call_tool(step["tool"], step.get("args") or {})
                out["result"] = {
                    "content": [c.model_dump(mode="json", exclude_none=True) for c in result.content],
                    "is_error": bool(result.is_error),
                }
            elif op == "raw":
                out.update(await raw_post(http, url, step, recorder))
    except Exception as exc:  # noqa: BLE001 - every failure is a result to report
        method = {"list_tools": "tools/list", "call": "tools/call"}.get(op, "")
        out["error"] = error_of(exc, recorder, start, method)
    out["http"] = recorder.since(start)
    return out


async def run(options: argparse.Namespace, script: list[dict[str, Any]]) -> dict[str, Any]:
    recorder = Recorder()
    proxy = None
    if options.proxy:
        headers = {"proxy-authorization": f"Bearer {options.token}"} if options.token else None
        proxy = httpx2.Proxy(options.proxy, headers=headers)
    inner = httpx2.AsyncHTTPTransport(proxy=proxy, trust_env=False)
    http = httpx2.AsyncClient(
        transport=RecordingTransport(inner, recorder),
        trust_env=False,
        timeout=httpx2.Timeout(options.timeout, read=options.timeout),
    )
    report: dict[str, Any] = {"steps": []}
    async with http:
        client = Client(
            streamable_http_client(options.url, http_client=http),
            mode=options.mode,
            cache=None,
            read_timeout_seconds=options.timeout,
        )
        connected = False
        close_start = 0
        try:
            # One scope around the whole connection: the SDK's task groups live inside it.
            with anyio.fail_after(options.timeout * (3 + len(script))):
                async with client:
                    connected = True
                    report["connect"] = {
                        "ok": True,
                        "protocol_version": client.protocol_version,
                        "http": recorder.since(0),
                    }
                    for step in script:
                        report["steps"].append(await run_step(client, http, options.url, step, recorder, options.timeout))
                    close_start = len(recorder.exchanges)
        except Exception as exc:  # noqa: BLE001 - a refused connection is a result too
            if not connected:
                method = "" if options.mode == "2026-07-28" else "initialize"
                if options.mode == "auto" and not any("initialize" in e["rpc"] for e in recorder.exchanges):
                    method = "server/discover"
                report["connect"] = {"ok": False, "error": error_of(exc, recorder, 0, method), "http": recorder.since(0)}
                return report
            report["close"] = {"error": error_of(exc, recorder, close_start, ""), "http": recorder.since(close_start)}
            return report
        report["close"] = {"http": recorder.since(close_start)}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="scripted MCP client")
    parser.add_argument("url")
    parser.add_argument("script", help="a JSON array of steps")
    parser.add_argument("--proxy", help="HTTP proxy URL (plain HTTP forward proxy)")
    parser.add_argument("--token", help="sent as Proxy-Authorization: Bearer TOKEN")
    parser.add_argument("--mode", default="legacy", help="legacy | auto | 2026-07-28")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    options = parser.parse_args()
    try:
        script = json.loads(options.script)
        assert isinstance(script, list), "SCRIPT is a JSON array"
        for step in script:
            assert isinstance(step, dict) and step.get("op") in ("list_tools", "call", "raw"), f"bad step {step!r}"
            assert step["op"] != "call" or isinstance(step.get("tool"), str), f"a call names its tool: {step!r}"
    except (ValueError, AssertionError) as exc:
        print(f"client.py: bad script: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report = anyio.run(run, options, script)
    report["seconds"] = round(time.monotonic() - started, 3)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
