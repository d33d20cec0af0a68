"""tools/list and tools/call, including tool-level and protocol-level errors."""

from __future__ import annotations

import anyio
import mcp.types as types
import pytest
from mcp.shared.exceptions import MCPError

from palisade_e2e import TEST_TIMEOUT, nonce, open_session, text_of

pytestmark = pytest.mark.anyio

CORE_TOOLS = {
    "echo",
    "get-sum",
    "get-structured-content",
    "get-tiny-image",
    "toggle-simulated-logging",
    "trigger-long-running-operation",
}
# Registered by server-everything only when the client advertises the matching capability.
SAMPLING_TOOL = "trigger-sampling-request"
ELICITATION_TOOL = "trigger-elicitation-request"


async def _sampling_stub(context, params):  # noqa: ANN001 - SDK callback signature
    return types.ErrorData(code=types.INVALID_REQUEST, message="not used")


async def _elicitation_stub(context, params):  # noqa: ANN001
    return types.ElicitResult(action="decline")


async def test_tools_list_describes_core_tools(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            listed = await session.list_tools()
            names = [t.name for t in listed.tools]
            assert len(names) == len(set(names)), f"duplicate tool names: {names}"
            assert CORE_TOOLS <= set(names), CORE_TOOLS - set(names)

            echo = next(t for t in listed.tools if t.name == "echo")
            assert echo.input_schema["type"] == "object"
            assert echo.input_schema["properties"]["message"]["type"] == "string"
            assert echo.input_schema.get("required") == ["message"]
            assert echo.annotations is not None and echo.annotations.read_only_hint is True

            structured = next(t for t in listed.tools if t.name == "get-structured-content")
            assert structured.output_schema is not None
            assert set(structured.output_schema["properties"]) == {"temperature", "conditions", "humidity"}


async def test_capability_gated_tools_follow_client_capabilities(everything_url: str) -> None:
    """The client's capabilities must reach the server intact: tools appear only when advertised."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (plain, _):
            plain_names = {t.name for t in (await plain.list_tools()).tools}
        async with open_session(
            everything_url, sampling_callback=_sampling_stub, elicitation_callback=_elicitation_stub
        ) as (capable, _):
            capable_names = {t.name for t in (await capable.list_tools()).tools}

    assert SAMPLING_TOOL not in plain_names
    assert ELICITATION_TOOL not in plain_names
    assert SAMPLING_TOOL in capable_names
    assert ELICITATION_TOOL in capable_names


async def test_echo_round_trips_message(everything_url: str) -> None:
    message = f'{nonce("echo")} héllo ✓ "quoted" \\ newline\nend'
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            result = await session.call_tool("echo", {"message": message})
    assert result.is_error is False
    assert len(result.content) == 1
    assert isinstance(result.content[0], types.TextContent)
    assert result.content[0].text == f"Echo: {message}"


async def test_get_sum_computes(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            result = await session.call_tool("get-sum", {"a": 19, "b": 23.5})
    assert result.is_error is False
    assert text_of(result) == "The sum of 19 and 23.5 is 42.5."


async def test_structured_content_is_returned(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            await session.list_tools()  # lets the SDK validate against the output schema
            result = await session.call_tool("get-structured-content", {"location": "New York"})
    assert result.is_error is False
    assert result.structured_content == {"temperature": 33, "conditions": "Cloudy", "humidity": 82}


async def test_invalid_arguments_yield_tool_error(everything_url: str) -> None:
    """Missing a required argument is reported as a tool error result (isError), not a crash."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            result = await session.call_tool("echo", {})
            assert result.is_error is True
            text = text_of(result)
            assert "message" in text and "echo" in text, text

            wrong_type = await session.call_tool("get-sum", {"a": "one", "b": 2})
            assert wrong_type.is_error is True
            assert "get-sum" in text_of(wrong_type)

            # The session is still fine afterwards.
            ok = await session.call_tool("echo", {"message": "after-error"})
            assert ok.is_error is False and text_of(ok) == "Echo: after-error"


async def test_unknown_tool_is_rejected(everything_url: str) -> None:
    """Calling a tool that does not exist fails: as a JSON-RPC error or as an isError result."""
    name = nonce("no-such-tool")
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            try:
                result = await session.call_tool(name, {})
            except MCPError as exc:
                assert exc.code == types.INVALID_PARAMS, (exc.code, exc.message)
                assert name in exc.message
            else:
                assert result.is_error is True
                assert name in text_of(result)
                assert "not found" in text_of(result).lower()
