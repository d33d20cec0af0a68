"""Server notifications (progress, logging) and client cancellation of an in-flight call."""

from __future__ import annotations

import re

import anyio
import mcp.types as types
import pytest

from palisade_e2e import TEST_TIMEOUT, open_session, text_of

pytestmark = pytest.mark.anyio

LONG_TOOL = "trigger-long-running-operation"
LOG_LEVELS = {"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}


async def _wait_until(predicate, timeout: float, interval: float = 0.05) -> None:  # noqa: ANN001
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(interval)


async def test_progress_notifications_are_delivered(everything_url: str) -> None:
    updates: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total))

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, log):
            result = await session.call_tool(LONG_TOOL, {"duration": 1.5, "steps": 3}, progress_callback=on_progress)
            assert result.is_error is False
            assert text_of(result) == "Long running operation completed. Duration: 1.5 seconds, Steps: 3."
            assert len(updates) >= 1, "no progress notification received"
            await _wait_until(lambda: len(updates) >= 3, timeout=5)

            call = next(m for m in log.posted_messages() if m.get("method") == "tools/call")
            assert "progressToken" in call["params"]["_meta"]

    assert updates == [(1, 3), (2, 3), (3, 3)]


async def test_logging_notifications_are_delivered(everything_url: str) -> None:
    received: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        received.append(params)

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url, logging_callback=on_log) as (session, _log):
            await session.set_logging_level("debug")
            started = text_of(await session.call_tool("toggle-simulated-logging", {}))
            match = re.search(r"Started simulated, random-leveled logging for session (\S+) ", started)
            assert match, started
            server_sid = match.group(1)
            try:
                # server-everything logs once right away, then every 5 s.
                await _wait_until(lambda: len(received) >= 1, timeout=15)
            finally:
                stopped = text_of(await session.call_tool("toggle-simulated-logging", {}))
            assert stopped == f"Stopped simulated logging for session {server_sid}"

    first = received[0]
    assert first.level in LOG_LEVELS
    assert isinstance(first.data, str)
    if server_sid == "undefined":
        # server-everything over stdio (behind the gateway) has no session id to quote.
        assert first.data.endswith("message"), first.data
    else:
        assert first.data.endswith(f"message - SessionId {server_sid}"), first.data


async def test_cancelled_call_leaves_session_usable(everything_url: str) -> None:
    first_progress = anyio.Event()
    outcome: dict[str, object] = {}

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_progress.set()

    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, log):

            async def long_call(task_status=anyio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
                with anyio.CancelScope() as scope:
                    task_status.started(scope)
                    outcome["result"] = await session.call_tool(
                        LONG_TOOL, {"duration": 8, "steps": 16}, progress_callback=on_progress
                    )
                outcome["cancelled"] = scope.cancelled_caught

            async with anyio.create_task_group() as tg:
                scope = await tg.start(long_call)
                # The call is demonstrably in flight once the server reports progress on it.
                with anyio.fail_after(10):
                    await first_progress.wait()
                scope.cancel()

            assert "result" not in outcome, "the cancelled call must not produce a result"
            assert outcome.get("cancelled") is True

            # The SDK tells the server with notifications/cancelled naming that request id.
            call = next(
                m for m in log.posted_messages() if m.get("method") == "tools/call" and m["params"]["name"] == LONG_TOOL
            )

            def cancels() -> list[dict]:
                return [m for m in log.posted_messages() if m.get("method") == "notifications/cancelled"]

            await _wait_until(lambda: len(cancels()) >= 1, timeout=5)
            assert [c["params"]["requestId"] for c in cancels()] == [call["id"]]

            # The session is still usable: a plain call, and a fresh long-running call
            # with its own progress, both complete.
            with anyio.fail_after(10):
                echoed = await session.call_tool("echo", {"message": "after-cancel"})
            assert text_of(echoed) == "Echo: after-cancel"

            updates: list[float] = []

            async def on_progress2(progress: float, total: float | None, message: str | None) -> None:
                updates.append(progress)

            with anyio.fail_after(10):
                done = await session.call_tool(LONG_TOOL, {"duration": 1, "steps": 2}, progress_callback=on_progress2)
            assert text_of(done) == "Long running operation completed. Duration: 1 seconds, Steps: 2."
            assert len(updates) >= 1
