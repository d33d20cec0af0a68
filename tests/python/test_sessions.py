"""Two concurrent sessions must be isolated from each other."""

from __future__ import annotations

import json
import re

import anyio
import mcp.types as types
import pytest

from palisade_e2e import TEST_TIMEOUT, nonce, open_session, text_of

pytestmark = pytest.mark.anyio


class Recorder:
    """Everything one session's callbacks saw, tagged with the session's own label."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.sampling_prompts: list[str] = []
        self.progress: dict[str, list[float]] = {}
        self.logs: list[types.LoggingMessageNotificationParams] = []

    async def sampling(self, context, params: types.CreateMessageRequestParams):  # noqa: ANN001
        content = params.messages[0].content
        self.sampling_prompts.append(content.text if isinstance(content, types.TextContent) else "")
        # Slow enough that both sessions' sampling requests are outstanding at once.
        await anyio.sleep(0.3)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"answer-from-{self.label}"),
            model=f"model-{self.label}",
        )

    def progress_callback(self, key: str):  # noqa: ANN201
        updates = self.progress.setdefault(key, [])

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            updates.append(progress)

        return on_progress

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)


async def test_concurrent_sessions_have_distinct_session_ids(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (sb, log_b):
            async with open_session(everything_url) as (sa, log_a):
                # Use both sessions, interleaved.
                for _ in range(3):
                    await sa.send_ping()
                    await sb.send_ping()
                sid_a, sid_b = log_a.session_id, log_b.session_id
                assert sid_a and sid_b
                assert sid_a != sid_b
                for log, own in ((log_a, sid_a), (log_b, sid_b)):
                    assert set(log.response_session_ids) == {own}
                    carried = [r for r in log.requests if r.session_id is not None]
                    assert len(carried) >= 4  # initialized + 3 pings (+ GET stream)
                    assert all(r.session_id == own for r in carried)

            # Leaving A's context terminated session A with a DELETE ...
            assert [r.session_id for r in log_a.requests if r.method == "DELETE"] == [sid_a]
            # ... which must not affect session B.
            assert text_of(await sb.call_tool("echo", {"message": "still-b"})) == "Echo: still-b"
            assert set(log_b.response_session_ids) == {sid_b}


async def test_concurrent_sessions_do_not_see_each_others_results(everything_url: str) -> None:
    a, b = Recorder("A"), Recorder("B")
    results: dict[str, dict[str, object]] = {"A": {}, "B": {}}
    server_sids: dict[str, str] = {}

    async def exercise(session, rec: Recorder, peer_started: anyio.Event, me_started: anyio.Event) -> None:  # noqa: ANN001
        me_started.set()
        await peer_started.wait()  # run the two sessions' traffic truly interleaved
        out = results[rec.label]
        echoes = [nonce(f"{rec.label}-echo") for _ in range(5)]
        async with anyio.create_task_group() as tg:

            async def echo(i: int) -> None:
                out[f"echo{i}"] = text_of(await session.call_tool("echo", {"message": echoes[i]}))

            async def sample() -> None:
                out["sampling"] = text_of(
                    await session.call_tool("trigger-sampling-request", {"prompt": f"prompt-of-{rec.label}"})
                )

            async def long_op() -> None:
                out["long"] = text_of(
                    await session.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 1, "steps": 4},
                        progress_callback=rec.progress_callback("long"),
                    )
                )

            for i in range(len(echoes)):
                tg.start_soon(echo, i)
            tg.start_soon(sample)
            tg.start_soon(long_op)
        out["expected_echoes"] = echoes

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            open_session(everything_url, sampling_callback=a.sampling, logging_callback=a.on_log) as (sa, log_a),
            open_session(everything_url, sampling_callback=b.sampling, logging_callback=b.on_log) as (sb, log_b),
        ):
            assert log_a.session_id != log_b.session_id
            a_started, b_started = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(exercise, sa, a, b_started, a_started)
                tg.start_soon(exercise, sb, b, a_started, b_started)

            # Logging is started in session A only; B must never get A's log lines.
            await sa.set_logging_level("debug")
            await sb.set_logging_level("debug")
            started = text_of(await sa.call_tool("toggle-simulated-logging", {}))
            match = re.search(r"logging for session (\S+) ", started)
            assert match, started
            server_sids["A"] = match.group(1)
            try:
                with anyio.fail_after(15):
                    while not a.logs:
                        await anyio.sleep(0.05)
                await anyio.sleep(0.5)  # grace period for a misrouted copy to reach B
            finally:
                await sa.call_tool("toggle-simulated-logging", {})

    for rec in (a, b):
        out = results[rec.label]
        for i, expected in enumerate(out["expected_echoes"]):
            assert out[f"echo{i}"] == f"Echo: {expected}"
        # Each session's sampling request went to its own callback and came back to its own call.
        assert rec.sampling_prompts == [f"Resource trigger-sampling-request context: prompt-of-{rec.label}"]
        payload = json.loads(out["sampling"].split("LLM sampling result:", 1)[1])
        assert payload["content"]["text"] == f"answer-from-{rec.label}"
        assert payload["model"] == f"model-{rec.label}"
        # Progress for each session's own long call only.
        assert out["long"] == "Long running operation completed. Duration: 1 seconds, Steps: 4."
        assert rec.progress["long"] and set(rec.progress["long"]) <= {1, 2, 3, 4}

    assert a.logs, "session A should have received its simulated log messages"
    if server_sids["A"] == "undefined":
        # stdio server-everything quotes no session id; only A turned logging on, so B gets none.
        assert not b.logs, f"A's log messages leaked into B: {b.logs}"
    else:
        assert all(server_sids["A"] in str(m.data) for m in a.logs)
        assert not [m for m in b.logs if server_sids["A"] in str(m.data)], "A's log messages leaked into B"
