"""Shared helpers for Palisade's end-to-end tests.

Every test talks to a real MCP endpoint over Streamable HTTP with the official
Python SDK's ``ClientSession``. The endpoint comes from an environment variable
(see ``conftest.py``); it is either the Palisade gateway in front of an
upstream server, or the upstream server itself.

Besides the session, ``open_session`` hands back an ``HttpLog`` that records
what actually went over HTTP (session id headers, the JSON-RPC messages the
client POSTed), so tests can assert on wire-level behaviour too.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL_ENV_EVERYTHING = "PALISADE_TEST_URL_EVERYTHING"
TOKEN_ENV = "PALISADE_TEST_BEARER_TOKEN"

# Whole-test budget (each test wraps its body in anyio.fail_after(TEST_TIMEOUT)).
TEST_TIMEOUT = float(os.environ.get("PALISADE_TEST_TIMEOUT", "45"))
# Budget for any single MCP request made through the session.
REQUEST_TIMEOUT = float(os.environ.get("PALISADE_TEST_REQUEST_TIMEOUT", "20"))

CLIENT_INFO = types.Implementation(name="palisade-e2e", version="0.1.0")

MCP_SESSION_ID_HEADER = "mcp-session-id"


def nonce(prefix: str = "n") -> str:
    """A short unique token, so a value seen in a result can only have come from this test."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class SentRequest:
    method: str  # HTTP method
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON body of a POST, else None

    @property
    def session_id(self) -> str | None:
        return self.headers.get(MCP_SESSION_ID_HEADER)


@dataclass
class HttpLog:
    """What one client connection sent and received at the HTTP layer."""

    # Every Mcp-Session-Id value seen on a response, in order.
    response_session_ids: list[str] = field(default_factory=list)
    # Every HTTP request the client sent, in order.
    requests: list[SentRequest] = field(default_factory=list)
    initialize_result: types.InitializeResult | None = None

    @property
    def session_id(self) -> str | None:
        """The session id the server assigned (from the first response that carried one)."""
        return self.response_session_ids[0] if self.response_session_ids else None

    def posted_messages(self) -> list[dict[str, Any]]:
        """JSON-RPC messages the client POSTed (batches flattened)."""
        out: list[dict[str, Any]] = []
        for req in self.requests:
            if req.method != "POST" or req.body is None:
                continue
            out.extend(req.body if isinstance(req.body, list) else [req.body])
        return out

    def posted_methods(self) -> list[str]:
        return [m["method"] for m in self.posted_messages() if "method" in m]


def text_of(result: types.CallToolResult | types.GetPromptResult) -> str:
    """All text content of a tool result (or prompt messages) joined with newlines."""
    if isinstance(result, types.GetPromptResult):
        blocks = [m.content for m in result.messages]
    else:
        blocks = list(result.content)
    return "\n".join(b.text for b in blocks if isinstance(b, types.TextContent))


def endpoint_headers() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV)
    return {"authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def open_session(
    url: str,
    *,
    initialize: bool = True,
    **session_kwargs: Any,
) -> AsyncIterator[tuple[ClientSession, HttpLog]]:
    """Connect a ClientSession over Streamable HTTP to ``url`` (and initialize it unless told not to).

    ``session_kwargs`` go to ``ClientSession`` (sampling_callback, elicitation_callback,
    logging_callback, message_handler, ...).
    """
    log = HttpLog()

    async def on_request(request: httpx2.Request) -> None:
        body: Any = None
        if request.method == "POST":
            try:
                body = json.loads(request.content)
            except (ValueError, httpx2.RequestNotRead):
                body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        log.requests.append(SentRequest(request.method, headers, body))

    async def on_response(response: httpx2.Response) -> None:
        sid = response.headers.get(MCP_SESSION_ID_HEADER)
        if sid:
            log.response_session_ids.append(sid)

    http = httpx2.AsyncClient(
        headers=endpoint_headers(),
        timeout=httpx2.Timeout(10.0, read=REQUEST_TIMEOUT * 2),
        event_hooks={"request": [on_request], "response": [on_response]},
    )
    session_kwargs.setdefault("read_timeout_seconds", REQUEST_TIMEOUT)
    session_kwargs.setdefault("client_info", CLIENT_INFO)
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write, **session_kwargs) as session:
                if initialize:
                    log.initialize_result = await session.initialize()
                yield session, log
