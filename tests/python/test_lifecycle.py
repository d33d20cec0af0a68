"""Initialization, version negotiation, ping and session-id handling."""

from __future__ import annotations

import os

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from palisade_e2e import CLIENT_INFO, TEST_TIMEOUT, endpoint_headers, open_session

pytestmark = pytest.mark.anyio

# server-everything identifies itself as this; override when the endpoint legitimately
# reports another name (set to an empty string to only require a non-empty name).
EXPECTED_SERVER_NAME = os.environ.get("PALISADE_TEST_EVERYTHING_SERVER_NAME", "mcp-servers/everything")


async def test_initialize_negotiates_latest_version_and_reports_server(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, log):
            result = log.initialize_result
            assert result is not None
            # The client offers its newest handshake revision; server-everything supports it.
            assert result.protocol_version == LATEST_HANDSHAKE_VERSION
            assert session.protocol_version == LATEST_HANDSHAKE_VERSION

            info = result.server_info
            assert info.name, "serverInfo.name must be present"
            assert info.version, "serverInfo.version must be present"
            if EXPECTED_SERVER_NAME:
                assert info.name == EXPECTED_SERVER_NAME

            caps = result.capabilities
            assert caps.tools is not None
            assert caps.resources is not None
            assert caps.prompts is not None
            assert caps.logging is not None

            # A request after the handshake works on the same session.
            assert isinstance(await session.send_ping(), types.EmptyResult)


async def test_initialize_with_older_protocol_version_is_honoured(everything_url: str) -> None:
    """A client asking for 2025-06-18 must get 2025-06-18 back and a working session."""
    older = "2025-06-18"
    assert older in HANDSHAKE_PROTOCOL_VERSIONS and older != LATEST_HANDSHAKE_VERSION
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url, initialize=False) as (session, log):
            result = await session.send_request(
                types.InitializeRequest(
                    params=types.InitializeRequestParams(
                        protocol_version=older,
                        capabilities=types.ClientCapabilities(),
                        client_info=CLIENT_INFO,
                    )
                ),
                types.InitializeResult,
            )
            assert result.protocol_version == older
            session.adopt(result)
            await session.send_notification(types.InitializedNotification())

            echoed = await session.call_tool("echo", {"message": "old-protocol"})
            assert echoed.is_error is False
            assert [c.text for c in echoed.content if isinstance(c, types.TextContent)] == ["Echo: old-protocol"]

            initialize_body = next(m for m in log.posted_messages() if m.get("method") == "initialize")
            assert initialize_body["params"]["protocolVersion"] == older
            # The negotiated version rides on every later request as MCP-Protocol-Version.
            later = [r for r in log.requests if r.method == "POST" and r.body.get("method") != "initialize"]
            assert later
            assert {r.headers.get("mcp-protocol-version") for r in later} == {older}


async def test_session_id_is_issued_on_initialize_and_sent_on_every_later_request(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, log):
            await session.list_tools()
            await session.send_ping()
            sid = log.session_id
            assert sid, "initialize response must carry an Mcp-Session-Id header"
            # The id is visible ASCII per the spec.
            assert all(0x21 <= ord(ch) <= 0x7E for ch in sid)

            posts = [r for r in log.requests if r.method == "POST"]
            assert posts[0].body["method"] == "initialize"
            assert posts[0].session_id is None, "initialize must not carry a session id"
            later = posts[1:]
            assert {"notifications/initialized", "tools/list", "ping"} <= {r.body.get("method") for r in later}
            assert all(r.session_id == sid for r in later), [(r.body, r.session_id) for r in later]


async def test_request_with_unknown_session_id_is_rejected(everything_url: str) -> None:
    """A made-up Mcp-Session-Id must not be accepted (no session fixation / guessing)."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with httpx2.AsyncClient(timeout=10.0, headers=endpoint_headers()) as http:
            response = await http.post(
                everything_url,
                headers={
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                    "mcp-session-id": "00000000-0000-4000-8000-000000000000",
                    "mcp-protocol-version": LATEST_HANDSHAKE_VERSION,
                },
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            )
            assert response.status_code in (400, 404), response.text
