"""Human in the loop (Z2): a policy with @confirm makes Palisade ask the user
through MCP elicitation before the call reaches the server. Runs against a
gateway configured with tests/python/policies-confirm (scripts/e2e-python)."""

from __future__ import annotations

import os

import anyio
import pytest
from mcp import types

from palisade_e2e import TEST_TIMEOUT, nonce, open_session, text_of

pytestmark = pytest.mark.anyio

URL_ENV = "PALISADE_TEST_URL_CONFIRM"


@pytest.fixture
def confirm_url() -> str:
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        pytest.skip(f"{URL_ENV} is not set: a Palisade route with the confirm policies (scripts/e2e-python)")
    return url


def answer(action: str, content: dict | None, seen: list):
    async def elicit(context, params: types.ElicitRequestParams):  # noqa: ANN001
        seen.append(params)
        return types.ElicitResult(action=action, content=content)

    return elicit


async def call_echo(url: str, message: str, **kwargs) -> types.CallToolResult:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(url, **kwargs) as (session, _log):
            return await session.call_tool("echo", {"message": message})


async def test_accepted_call_runs_and_the_user_saw_tool_server_and_arguments(confirm_url: str) -> None:
    seen: list = []
    message = nonce("hello")
    result = await call_echo(confirm_url, message, elicitation_callback=answer("accept", {"confirm": True}, seen))
    assert result.is_error is False, text_of(result)
    assert text_of(result) == f"Echo: {message}"
    assert len(seen) == 1
    asked = seen[0]
    assert '"echo"' in asked.message
    assert message in asked.message
    assert asked.requested_schema["required"] == ["confirm"]
    assert asked.requested_schema["properties"]["confirm"]["type"] == "boolean"


@pytest.mark.parametrize(
    ("action", "content", "why"),
    [
        ("decline", None, "declined"),
        ("cancel", None, "cancelled"),
        ("accept", {"confirm": False}, "did not tick"),
    ],
)
async def test_a_call_not_confirmed_never_runs(confirm_url: str, action: str, content, why: str) -> None:
    seen: list = []
    message = nonce("secret-plan")
    result = await call_echo(confirm_url, message, elicitation_callback=answer(action, content, seen))
    assert len(seen) == 1
    assert result.is_error is True
    text = text_of(result)
    assert why in text
    assert f"Echo: {message}" not in text


async def test_without_elicitation_the_call_is_refused_with_a_clear_message(confirm_url: str) -> None:
    message = nonce("no-ui")
    result = await call_echo(confirm_url, message)
    assert result.is_error is True
    text = text_of(result)
    assert "does not support elicitation" in text
    assert f"Echo: {message}" not in text


async def test_other_tools_need_no_confirmation(confirm_url: str) -> None:
    seen: list = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(
            confirm_url, elicitation_callback=answer("decline", None, seen)
        ) as (session, _log):
            result = await session.call_tool("get-sum", {"a": 2, "b": 3})
    assert result.is_error is False
    assert "5" in text_of(result)
    assert seen == []
