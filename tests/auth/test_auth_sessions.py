"""MCP sessions are bound to the authenticated user: a session id is not a credential."""

from __future__ import annotations

import pytest

from palisade_auth import (
    IdP,
    Gateway,
    Mcp,
    assert_audit_failure,
    assert_invalid_token,
    assert_unauthenticated,
    bearer,
    describe,
    no_auth,
    rpc_result,
    tool_text,
)


def alice_session(gw: Gateway, idp: IdP) -> Mcp:
    client = Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), sub="alice")))
    rpc_result(client.initialize())
    assert client.session_id, "no Mcp-Session-Id issued"
    return client


@pytest.mark.parametrize("method", ["tools/call", "tools/list"])
def test_other_users_token_on_session_is_404(gw: Gateway, idp: IdP, method: str) -> None:
    """Asserts: bob's valid token with alice's Mcp-Session-Id → 404 (the session does not exist for him),
    audited session_principal_mismatch; alice's session keeps working afterwards."""
    with alice_session(gw, idp) as alice:
        mark = gw.mark()
        bob = bearer(idp.token(gw.endpoint("demo"), sub="bob"))
        if method == "tools/call":
            resp = alice.call_tool("echo", {"text": "from bob"}, auth=bob)
        else:
            resp = alice.list_tools(auth=bob)
        assert resp.status_code == 404, f"expected 404 for bob on alice's session, got {describe(resp)}"
        assert "from bob" not in resp.text
        assert_audit_failure(gw, "session_principal_mismatch", mark)
        assert tool_text(alice.call_tool("echo", {"text": "still alice"})) == "still alice"


@pytest.mark.parametrize("sub", ["alice ", "Alice"], ids=["trailing-space", "case"])
def test_session_binding_compares_subject_exactly(gw: Gateway, idp: IdP, sub: str) -> None:
    """Asserts: a look-alike subject ("alice ", "Alice") does not get alice's session → 404."""
    with alice_session(gw, idp) as alice:
        spoof = bearer(idp.token(gw.endpoint("demo"), sub=sub))
        resp = alice.call_tool("echo", {"text": "spoof"}, auth=spoof)
        assert resp.status_code == 404, f"sub {sub!r} used alice's session: {describe(resp)}"


def test_fresh_token_of_same_user_keeps_session(gw: Gateway, idp: IdP) -> None:
    """Asserts: the session is bound to the user, not to one token: a newly minted token for alice (another
    jti, another algorithm) continues her session."""
    with alice_session(gw, idp) as alice:
        renewed = bearer(idp.token(gw.endpoint("demo"), sub="alice", alg="RS256"))
        assert tool_text(alice.call_tool("echo", {"text": "renewed"}, auth=renewed)) == "renewed"


def test_session_id_without_token_is_401(gw: Gateway, idp: IdP) -> None:
    """Asserts: alice's valid session id with no Authorization header → 401 with the missing-token
    challenge; the session id is not a credential."""
    with alice_session(gw, idp) as alice:
        mark = gw.mark()
        resp = alice.call_tool("echo", {"text": "no token"}, auth=no_auth)
        assert_unauthenticated(resp, gw)
        assert_audit_failure(gw, "missing_token", mark)


def test_session_id_with_invalid_token_is_401(gw: Gateway, idp: IdP) -> None:
    """Asserts: alice's session id with an expired token of hers → 401 invalid_token."""
    with alice_session(gw, idp) as alice:
        expired = bearer(idp.token(gw.endpoint("demo"), sub="alice", exp=1, iat=0))
        assert_invalid_token(alice.call_tool("echo", {"text": "x"}, auth=expired), gw)


def test_delete_of_other_users_session_is_refused(gw: Gateway, idp: IdP) -> None:
    """Asserts: bob cannot end alice's session with DELETE (404, or 403); alice's session keeps working."""
    with alice_session(gw, idp) as alice:
        bob = bearer(idp.token(gw.endpoint("demo"), sub="bob"))
        headers = alice.headers(auth=bob, method="DELETE")
        resp = alice.http.delete(alice.url, headers=headers)
        assert resp.status_code in (403, 404), f"bob's DELETE of alice's session: {describe(resp)}"
        assert tool_text(alice.call_tool("echo", {"text": "alive"})) == "alive"
