"""Scopes per endpoint (403 insufficient_scope) and step-up per tool: scopes (403) and user
authentication strength (RFC 9470: 401 insufficient_user_authentication)."""

from __future__ import annotations

import pytest

from palisade_auth import (
    IdP,
    Gateway,
    Mcp,
    StartGateway,
    assert_audit_failure,
    assert_insufficient_scope,
    bearer,
    describe,
    find_challenge,
    gateway_config,
    now,
    rpc_result,
    tool_text,
)


@pytest.mark.parametrize("scope", ["other", "", None, "mcpx", "MCP"], ids=["other", "empty", "absent", "prefix", "case"])
def test_endpoint_scope_missing_is_403(gw: Gateway, idp: IdP, scope: str | None) -> None:
    """Asserts: a valid token without the required `mcp` scope (other scope, empty, no scope claim, a
    look-alike, different case) → 403 `Bearer error="insufficient_scope", scope="mcp"` with resource_metadata."""
    mark = gw.mark()
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), scope=scope))) as client:
        resp = client.initialize()
    assert_insufficient_scope(resp, gw, missing={"mcp"}, required={"mcp"})
    assert not resp.headers.get("mcp-session-id")
    assert_audit_failure(gw, "insufficient_scope", mark)


def test_endpoint_extra_scope(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: `[upstreams.demo.auth] required_scopes = ["demo:use"]` adds to the global `mcp`: a token with
    only `mcp` → 403 naming demo:use; with both → works."""
    gw = start_gateway(gateway_config([idp.issuer_entry()], demo_auth={"required_scopes": ["demo:use"]}))
    mark = gw.mark()
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), scope="mcp"))) as client:
        resp = client.initialize()
    assert_insufficient_scope(resp, gw, missing={"demo:use"}, required={"mcp", "demo:use"})
    assert_audit_failure(gw, "insufficient_scope", mark)
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), scope="demo:use mcp"))) as client:
        rpc_result(client.initialize())


def _step_up_gateway(idp: IdP, start_gateway: StartGateway, requirement: dict) -> Gateway:
    return start_gateway(gateway_config([idp.issuer_entry()], demo_auth={"step_up": {"add": requirement}}))


def test_step_up_scope_on_tool(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: with step-up `add` → scopes ["math:write"]: a `mcp`-only token initializes and calls echo,
    but tools/call add → HTTP 403 insufficient_scope with scope naming math:write; the session survives
    (echo still works) and a token with math:write can call add."""
    gw = _step_up_gateway(idp, start_gateway, {"scopes": ["math:write"]})
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), scope="mcp"))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("echo", {"text": "fine"})) == "fine"
        mark = gw.mark()
        resp = client.call_tool("add", {"a": 2, "b": 3})
        assert_insufficient_scope(resp, gw, missing={"math:write"}, required={"mcp", "math:write"})
        assert_audit_failure(gw, "step_up_scope", mark)
        assert tool_text(client.call_tool("echo", {"text": "still"})) == "still"
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), scope="mcp math:write"))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("add", {"a": 2, "b": 3})) == "5"


def test_step_up_scope_applies_on_aggregated_endpoint(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: the step-up on demo's `add` is not bypassed through /mcp: demo__add without math:write
    → 403 insufficient_scope; demo__echo works."""
    gw = _step_up_gateway(idp, start_gateway, {"scopes": ["math:write"]})
    with Mcp(gw.endpoint(None), bearer(idp.token(gw.endpoint(None), scope="mcp"))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("demo__echo", {"text": "agg"})) == "agg"
        resp = client.call_tool("demo__add", {"a": 1, "b": 1})
        assert_insufficient_scope(resp, gw, missing={"math:write"}, required={"mcp", "math:write"}, endpoint=None)


def _user_auth_challenge(resp, gw: Gateway):  # noqa: ANN001, ANN202
    assert resp.status_code == 401, f"expected 401 insufficient_user_authentication: {describe(resp)}"
    c = find_challenge(resp, ["Bearer"])
    assert c is not None, f"no Bearer challenge: {describe(resp)}"
    assert c.params.get("error") == "insufficient_user_authentication", describe(resp)
    assert c.params.get("resource_metadata") == gw.prm_url("demo"), describe(resp)
    return c


@pytest.mark.parametrize("amr", [None, ["pwd"], "mfa"], ids=["absent", "pwd-only", "string-not-array"])
def test_step_up_mfa_missing(idp: IdP, start_gateway: StartGateway, amr: object) -> None:
    """Asserts: step-up `add` → amr ["mfa"]: a token without `mfa` in its `amr` array initializes and calls
    echo, but add → 401 `Bearer error="insufficient_user_authentication"` (RFC 9470); audited."""
    gw = _step_up_gateway(idp, start_gateway, {"amr": ["mfa"]})
    extra = {} if amr is None else {"amr": amr}
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), **extra))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("echo", {"text": "x"})) == "x"
        mark = gw.mark()
        resp = client.call_tool("add", {"a": 1, "b": 2})
        if amr == "mfa":
            # `amr` must be an array (RFC 8176); a bare string may be read leniently. Either refuse or allow,
            # but never a 5xx.
            assert resp.status_code in (200, 401), describe(resp)
            if resp.status_code == 200:
                return
        _user_auth_challenge(resp, gw)
        assert_audit_failure(gw, "step_up_authentication", mark)


def test_step_up_mfa_present(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: with `amr: ["pwd", "mfa"]` the MFA step-up tool works."""
    gw = _step_up_gateway(idp, start_gateway, {"amr": ["mfa"]})
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), amr=["pwd", "mfa"]))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("add", {"a": 1, "b": 2})) == "3"


def test_step_up_acr(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: step-up acr ["urn:palisade:test:loa:2"]: a loa:1 token → 401 insufficient_user_authentication
    with acr_values naming loa:2; a loa:2 token works."""
    want = "urn:palisade:test:loa:2"
    gw = _step_up_gateway(idp, start_gateway, {"acr": [want]})
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), acr="urn:palisade:test:loa:1"))) as client:
        rpc_result(client.initialize())
        c = _user_auth_challenge(client.call_tool("add", {"a": 1, "b": 2}), gw)
        assert c.params.get("acr_values", "").split() == [want], c
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), acr=want))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("add", {"a": 1, "b": 2})) == "3"


@pytest.mark.parametrize("auth_age", [None, 3600], ids=["no-auth_time", "stale-auth_time"])
def test_step_up_max_age_refused(idp: IdP, start_gateway: StartGateway, auth_age: int | None) -> None:
    """Asserts: step-up max_age_s = 60: a token whose `auth_time` is an hour old (or absent) → 401
    insufficient_user_authentication with max_age="60"."""
    gw = _step_up_gateway(idp, start_gateway, {"max_age_s": 60})
    extra = {} if auth_age is None else {"auth_time": now() - auth_age}
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), **extra))) as client:
        rpc_result(client.initialize())
        c = _user_auth_challenge(client.call_tool("add", {"a": 1, "b": 2}), gw)
        assert c.params.get("max_age") == "60", c


def test_step_up_max_age_fresh(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: step-up max_age_s = 60 with `auth_time` 5 s ago → add works."""
    gw = _step_up_gateway(idp, start_gateway, {"max_age_s": 60})
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), auth_time=now() - 5))) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("add", {"a": 1, "b": 2})) == "3"
