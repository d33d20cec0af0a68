"""resources/list, resources/read, resources/templates/list, prompts/list, prompts/get."""

from __future__ import annotations

import base64

import anyio
import mcp.types as types
import pytest
from mcp.shared.exceptions import MCPError

from palisade_e2e import TEST_TIMEOUT, open_session, text_of

pytestmark = pytest.mark.anyio

FEATURES_URI = "demo://resource/static/document/features.md"


async def test_list_and_read_static_resource(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            listed = await session.list_resources()
            by_uri = {str(r.uri): r for r in listed.resources}
            assert FEATURES_URI in by_uri, sorted(by_uri)
            assert by_uri[FEATURES_URI].name == "features.md"

            read = await session.read_resource(FEATURES_URI)
    assert len(read.contents) == 1
    content = read.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert str(content.uri) == FEATURES_URI
    assert content.mime_type == "text/markdown"
    assert content.text.startswith("# Everything Server - Features")
    # Whole document made it through (it is several KiB long and ends with the tasks section).
    assert len(content.text) > 4000
    assert "trigger-long-running-operation" in content.text


async def test_read_templated_text_and_blob_resources(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            templates = await session.list_resource_templates()
            uri_templates = {t.uri_template for t in templates.resource_templates}
            assert "demo://resource/dynamic/text/{resourceId}" in uri_templates
            assert "demo://resource/dynamic/blob/{resourceId}" in uri_templates

            text = await session.read_resource("demo://resource/dynamic/text/17")
            blob = await session.read_resource("demo://resource/dynamic/blob/23")

    [text_content] = text.contents
    assert isinstance(text_content, types.TextResourceContents)
    assert text_content.text.startswith("Resource 17: This is a plaintext resource")

    [blob_content] = blob.contents
    assert isinstance(blob_content, types.BlobResourceContents)
    decoded = base64.b64decode(blob_content.blob).decode()
    assert decoded.startswith("Resource 23: This is a base64 blob")


async def test_read_unknown_resource_fails(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            with pytest.raises(MCPError) as excinfo:
                await session.read_resource("demo://resource/static/document/does-not-exist.md")
            assert "does-not-exist.md" in excinfo.value.message
            # Still usable.
            assert (await session.read_resource("demo://resource/dynamic/text/1")).contents


async def test_list_prompts_describes_arguments(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            listed = await session.list_prompts()
    prompts = {p.name: p for p in listed.prompts}
    assert {"simple-prompt", "args-prompt", "resource-prompt"} <= set(prompts)
    args = {a.name: a for a in prompts["args-prompt"].arguments or []}
    assert set(args) == {"city", "state"}
    assert args["city"].required is True
    assert not args["state"].required


async def test_get_prompt_with_arguments(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            both = await session.get_prompt("args-prompt", {"city": "Springfield", "state": "Oregon"})
            city_only = await session.get_prompt("args-prompt", {"city": "Zürich"})
            simple = await session.get_prompt("simple-prompt")

    assert [m.role for m in both.messages] == ["user"]
    assert text_of(both) == "What's weather in Springfield, Oregon?"
    assert text_of(city_only) == "What's weather in Zürich?"
    assert len(simple.messages) >= 1 and text_of(simple)


async def test_get_prompt_missing_required_argument_fails(everything_url: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with open_session(everything_url) as (session, _log):
            with pytest.raises(MCPError) as excinfo:
                await session.get_prompt("args-prompt", {"state": "Oregon"})
            assert excinfo.value.code == types.INVALID_PARAMS
            assert "city" in excinfo.value.message
