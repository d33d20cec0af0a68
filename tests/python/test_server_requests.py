"""Server-to-client requests relayed inside a tool call: sampling and elicitation."""

from __future__ import annotations

import json

import anyio
import mcp.types as types
import pytest

from palisade_e2e import TEST_TIMEOUT, nonce, open_session, text_of

pytestmark = pytest.mark.anyio


def _sampling_payload(result: types.CallToolResult) -> dict:
    """server-everything returns 'LLM sampling result: \\n<json of the CreateMessageResult>'."""
    text = text_of(result)
    prefix = "LLM sampling result:"
    assert text.startswith(prefix), text
    return json.loads(text[len(prefix) :])


async def test_sampling_callback_result_reaches_tool(everything_url: str) -> None:
    prompt = nonce("prompt")
    answer = nonce("answer")
    seen: list[types.CreateMessageRequestParams] = []

    async def sampling(context, params: types.CreateMessageRequestParams):  # noqa: ANN001
        seen.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=answer),
            model="palisade-e2e-model",
            stop_reason="endTurn",
        )

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url, sampling_callback=sampling) as (session, _log):
            result = await session.call_tool("trigger-sampling-request", {"prompt": prompt, "maxTokens": 77})

    assert len(seen) == 1
    request = seen[0]
    assert request.max_tokens == 77
    assert request.system_prompt == "You are a helpful test server."
    [message] = request.messages
    assert message.role == "user"
    assert isinstance(message.content, types.TextContent)
    assert prompt in message.content.text

    assert result.is_error is False
    payload = _sampling_payload(result)
    assert payload["model"] == "palisade-e2e-model"
    assert payload["role"] == "assistant"
    assert payload["stopReason"] == "endTurn"
    assert payload["content"] == {"type": "text", "text": answer}


async def test_sampling_callback_error_surfaces_as_tool_error(everything_url: str) -> None:
    reason = nonce("refused")

    async def sampling(context, params):  # noqa: ANN001
        return types.ErrorData(code=types.INVALID_REQUEST, message=f"user {reason}")

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url, sampling_callback=sampling) as (session, _log):
            result = await session.call_tool("trigger-sampling-request", {"prompt": "x"})
            assert result.is_error is True
            assert reason in text_of(result)
            # The session survives a failed server->client request.
            assert text_of(await session.call_tool("echo", {"message": "ok"})) == "Echo: ok"


async def test_elicitation_accept_content_reaches_tool(everything_url: str) -> None:
    name = nonce("Ada")
    seen: list[types.ElicitRequestParams] = []

    async def elicit(context, params: types.ElicitRequestParams):  # noqa: ANN001
        seen.append(params)
        return types.ElicitResult(
            action="accept",
            content={"name": name, "check": True, "email": "ada@example.org", "integer": 7},
        )

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url, elicitation_callback=elicit) as (session, _log):
            result = await session.call_tool("trigger-elicitation-request", {})

    assert len(seen) == 1
    request = seen[0]
    assert isinstance(request, types.ElicitRequestFormParams)
    assert request.message == "Please provide inputs for the following fields:"
    assert request.requested_schema["required"] == ["name"]
    assert "email" in request.requested_schema["properties"]

    assert result.is_error is False
    text = text_of(result)
    assert "User provided the requested information" in text
    assert f"- Name: {name}" in text
    assert "- Agreed to terms: true" in text
    assert "- Email: ada@example.org" in text
    assert "- Favorite Integer: 7" in text
    raw = json.loads(text.split("Raw result:", 1)[1])
    assert raw == {
        "action": "accept",
        "content": {"name": name, "check": True, "email": "ada@example.org", "integer": 7},
    }


async def test_elicitation_decline_reaches_tool(everything_url: str) -> None:
    async def elicit(context, params):  # noqa: ANN001
        return types.ElicitResult(action="decline")

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url, elicitation_callback=elicit) as (session, _log):
            result = await session.call_tool("trigger-elicitation-request", {})

    assert result.is_error is False
    text = text_of(result)
    assert "User declined to provide the requested information" in text
    assert "Name:" not in text
