"""DPoP (RFC 9449): sender-constrained tokens bound with cnf.jkt, one fresh proof per request."""

from __future__ import annotations

from collections.abc import Iterable

import httpx2
import pytest

from palisade_auth import (
    OMIT,
    IdP,
    Gateway,
    Key,
    KeySet,
    Mcp,
    StartGateway,
    assert_audit_failure,
    assert_audit_success,
    ath_of,
    b64url,
    bearer,
    describe,
    dpop_auth,
    dpop_proof,
    ec_key,
    find_challenge,
    gateway_config,
    jws,
    now,
    rpc_result,
    tool_text,
)

DPOP_ERRORS = ("invalid_dpop_proof", "invalid_token")


@pytest.fixture
def dpop_gw(idp: IdP, start_gateway: StartGateway) -> Gateway:
    """/mcp/demo with require_dpop = true."""
    return start_gateway(gateway_config([idp.issuer_entry()], demo_auth={"require_dpop": True}))


@pytest.fixture(scope="module")
def holder() -> Key:
    """The client's DPoP key (P-256)."""
    return ec_key("holder")


def bound_token(idp: IdP, gw: Gateway, key: Key, **claims: object) -> str:
    return idp.token(gw.endpoint("demo"), cnf={"jkt": key.thumbprint()}, **claims)


def assert_dpop_refused(resp: httpx2.Response, *, schemes: Iterable[str] = ("DPoP",),
                        errors: Iterable[str] = DPOP_ERRORS) -> None:
    """401 with a challenge of one of ``schemes`` whose error is one of ``errors``."""
    assert resp.status_code == 401, f"expected 401, got {describe(resp)}"
    schemes = list(schemes)
    c = find_challenge(resp, schemes)
    assert c is not None, f"no {'/'.join(schemes)} challenge: {describe(resp)}"
    assert c.params.get("error") in set(errors), f"error should be one of {sorted(set(errors))}: {describe(resp)}"


def session(gw: Gateway, token: str, key: Key) -> Mcp:
    client = Mcp(gw.endpoint("demo"), dpop_auth(token, key))
    rpc_result(client.initialize())
    return client


def test_dpop_bound_token_with_proofs_works(dpop_gw: Gateway, idp: IdP, holder: Key) -> None:
    """Asserts: `Authorization: DPoP <token with cnf.jkt>` plus a fresh proof per request (htm, htu, iat,
    jti, ath) initializes and calls echo twice; audited auth.success."""
    mark = dpop_gw.mark()
    with session(dpop_gw, bound_token(idp, dpop_gw, holder), holder) as client:
        assert tool_text(client.call_tool("echo", {"text": "one"})) == "one"
        assert tool_text(client.call_tool("echo", {"text": "two"})) == "two"
    assert_audit_success(dpop_gw, mark)


def test_dpop_with_ed25519_proof_key(dpop_gw: Gateway, idp: IdP, keys: KeySet) -> None:
    """Asserts: an EdDSA (Ed25519) proof key works as well as ES256."""
    key = keys.attacker_ed  # any key the client holds; it is never in the issuer's JWKS
    with session(dpop_gw, bound_token(idp, dpop_gw, key), key) as client:
        assert tool_text(client.call_tool("echo", {"text": "ed"})) == "ed"


def test_dpop_missing_proof(dpop_gw: Gateway, idp: IdP, holder: Key) -> None:
    """Asserts: `Authorization: DPoP <bound token>` without a DPoP header → 401 DPoP challenge; audited
    dpop_missing."""
    token = bound_token(idp, dpop_gw, holder)
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), lambda _m, _u: {"authorization": f"DPoP {token}"}) as client:
        resp = client.initialize()
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_missing", mark)


@pytest.mark.parametrize("require_dpop", [True, False], ids=["dpop-endpoint", "bearer-endpoint"])
def test_bound_token_sent_as_bearer(idp: IdP, start_gateway: StartGateway, holder: Key, require_dpop: bool) -> None:
    """Asserts: a token with cnf.jkt presented as `Bearer` is refused (RFC 9449 section 7.1: a stolen bound
    token is useless without the key), also on an endpoint that does not require DPoP."""
    gw = start_gateway(gateway_config([idp.issuer_entry()], demo_auth={"require_dpop": require_dpop}))
    mark = gw.mark()
    with Mcp(gw.endpoint("demo"), bearer(bound_token(idp, gw, holder))) as client:
        resp = client.initialize()
    assert_dpop_refused(resp, schemes=("DPoP", "Bearer"))
    assert_audit_failure(gw, "dpop_bound_token_as_bearer", mark)


def test_bound_token_as_bearer_with_proof_header(dpop_gw: Gateway, idp: IdP, holder: Key) -> None:
    """Asserts: `Authorization: Bearer <bound token>` plus a valid DPoP header is still refused (the scheme
    must be DPoP)."""
    token = bound_token(idp, dpop_gw, holder)
    url = dpop_gw.endpoint("demo")
    with Mcp(url, lambda m, u: {"authorization": f"Bearer {token}",
                                "dpop": dpop_proof(holder, m, u, access_token=token)}) as client:
        resp = client.initialize()
    assert_dpop_refused(resp, schemes=("DPoP", "Bearer"))


def test_unbound_bearer_token_on_dpop_endpoint(dpop_gw: Gateway, idp: IdP) -> None:
    """Asserts: require_dpop = true refuses a plain (unbound) Bearer token → 401 with a DPoP challenge."""
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), bearer(idp.token(dpop_gw.endpoint("demo")))) as client:
        resp = client.initialize()
    assert resp.status_code == 401, describe(resp)
    assert find_challenge(resp, ["DPoP"]) is not None, f"a DPoP endpoint should offer a DPoP challenge: {describe(resp)}"
    assert_audit_failure(dpop_gw, "dpop_unbound_token", mark)


def test_unbound_token_with_valid_proof_on_dpop_endpoint(dpop_gw: Gateway, idp: IdP, holder: Key) -> None:
    """Asserts: an unbound token (no cnf) sent with scheme DPoP and a valid proof → 401 (the endpoint needs
    DPoP-*bound* tokens)."""
    token = idp.token(dpop_gw.endpoint("demo"))
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, holder)) as client:
        resp = client.initialize()
    assert_dpop_refused(resp, schemes=("DPoP", "Bearer"))
    assert_audit_failure(dpop_gw, "dpop_unbound_token", mark)


def test_replayed_proof(dpop_gw: Gateway, idp: IdP, holder: Key) -> None:
    """Asserts: a proof accepted once (same jti) is refused when sent again → 401 DPoP invalid_dpop_proof;
    audited dpop_replay."""
    token = bound_token(idp, dpop_gw, holder)
    with session(dpop_gw, token, holder) as client:
        proof = dpop_proof(holder, "POST", client.url, access_token=token)
        assert tool_text(client.call_tool("echo", {"text": "first"}, headers={"dpop": proof})) == "first"
        mark = dpop_gw.mark()
        resp = client.call_tool("echo", {"text": "replay"}, headers={"dpop": proof})
        assert_dpop_refused(resp)
        assert "replay" not in resp.text
        assert_audit_failure(dpop_gw, "dpop_replay", mark)


@pytest.mark.parametrize("which", ["other-endpoint", "other-port", "other-host", "https"])
def test_proof_for_another_url(dpop_gw: Gateway, idp: IdP, holder: Key, which: str) -> None:
    """Asserts: `htu` must be this request's URL ({base}/mcp/demo): another endpoint, port, host name or
    scheme → 401. (A query or fragment in htu is ignored by RFC 9449 section 4.3, so not tested here.)"""
    token = bound_token(idp, dpop_gw, holder)
    base = dpop_gw.base
    htu = {
        "other-endpoint": f"{base}/mcp/other",
        "other-port": "http://127.0.0.1:1/mcp/demo",
        "other-host": base.replace("127.0.0.1", "localhost") + "/mcp/demo",
        "https": base.replace("http://", "https://") + "/mcp/demo",
    }[which]
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, holder)) as client:
        resp = client.initialize(headers={"dpop": dpop_proof(holder, "POST", htu, access_token=token)})
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_wrong_target", mark)


@pytest.mark.parametrize("htm", ["GET", "DELETE", "post"])
def test_proof_for_another_method(dpop_gw: Gateway, idp: IdP, holder: Key, htm: str) -> None:
    """Asserts: a proof made for GET (or DELETE, or lower-case `post`) sent on a POST → 401."""
    token = bound_token(idp, dpop_gw, holder)
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, holder)) as client:
        proof = dpop_proof(holder, htm, client.url, access_token=token)
        resp = client.initialize(headers={"dpop": proof})
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_wrong_target", mark)


def test_proof_key_does_not_match_cnf(dpop_gw: Gateway, idp: IdP, holder: Key, keys: KeySet) -> None:
    """Asserts: token bound to the holder's key, proof signed (and carrying the jwk of) another key → 401;
    audited dpop_mismatch."""
    token = bound_token(idp, dpop_gw, holder)
    thief = keys.attacker_ec
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, thief)) as client:
        resp = client.initialize()
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_mismatch", mark)


@pytest.mark.parametrize("ath", ["other-token", "missing", "not-base64url"])
def test_proof_with_wrong_ath(dpop_gw: Gateway, idp: IdP, holder: Key, ath: str) -> None:
    """Asserts: `ath` must be base64url(SHA-256(the access token)): another token's hash, no ath, or junk
    → 401."""
    token = bound_token(idp, dpop_gw, holder)
    other = bound_token(idp, dpop_gw, holder, sub="someone-else")
    value = {"other-token": ath_of(other), "missing": OMIT, "not-base64url": "%%%"}[ath]
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, holder)) as client:
        resp = client.initialize(headers={"dpop": dpop_proof(holder, "POST", client.url, ath=value)})
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_wrong_ath", mark)


@pytest.mark.parametrize("offset", [-600, 600, -3600], ids=["10-min-old", "10-min-ahead", "1-hour-old"])
def test_proof_iat_out_of_window(dpop_gw: Gateway, idp: IdP, holder: Key, offset: int) -> None:
    """Asserts: a proof whose `iat` is further than 300 s (+ leeway) from now, either way → 401."""
    token = bound_token(idp, dpop_gw, holder)
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, holder)) as client:
        proof = dpop_proof(holder, "POST", client.url, access_token=token, iat=now() + offset)
        resp = client.initialize(headers={"dpop": proof})
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_stale", mark)


def _bad_proof(kind: str, holder: Key, url: str, token: str) -> str:
    base = {"jti": "j-" + kind, "htm": "POST", "htu": url, "iat": now(), "ath": ath_of(token)}
    public = holder.public_jwk(with_meta=False)
    if kind == "typ-jwt":
        return dpop_proof(holder, "POST", url, access_token=token, typ="JWT")
    if kind == "alg-none":
        return jws({"typ": "dpop+jwt", "alg": "none", "jwk": public}, base, None)
    if kind == "alg-hs256":
        return jws({"typ": "dpop+jwt", "alg": "HS256", "jwk": public}, base, b"shared-secret")
    if kind == "private-key-in-jwk":
        nums = holder.private.private_numbers()
        leaked = dict(public, d=b64url(nums.private_value.to_bytes(32, "big")))
        return dpop_proof(holder, "POST", url, access_token=token, jwk=leaked)
    if kind == "no-jwk":
        return jws({"typ": "dpop+jwt", "alg": "ES256"}, base, holder)
    if kind == "bad-signature":
        proof = dpop_proof(holder, "POST", url, access_token=token)
        head, body, _ = proof.split(".")
        other = dpop_proof(holder, "POST", url, access_token=token)
        return f"{head}.{body}.{other.split('.')[2]}"
    if kind == "no-jti":
        return dpop_proof(holder, "POST", url, access_token=token, jti="")
    if kind == "not-a-jwt":
        return "this-is-not-a-proof"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["typ-jwt", "alg-none", "alg-hs256", "private-key-in-jwk", "no-jwk",
                                  "bad-signature", "no-jti", "not-a-jwt"])
def test_malformed_proof(dpop_gw: Gateway, idp: IdP, holder: Key, kind: str) -> None:
    """Asserts: proofs violating RFC 9449 section 4.3 (typ not dpop+jwt, alg none or symmetric, a private key
    in `jwk`, no `jwk`, a bad signature, an empty jti, not a JWT) → 401 invalid_dpop_proof/invalid_token."""
    token = bound_token(idp, dpop_gw, holder)
    mark = dpop_gw.mark()
    with Mcp(dpop_gw.endpoint("demo"), dpop_auth(token, holder)) as client:
        resp = client.initialize(headers={"dpop": _bad_proof(kind, holder, client.url, token)})
    assert_dpop_refused(resp)
    assert_audit_failure(dpop_gw, "dpop_invalid", mark)


def test_two_proof_headers(dpop_gw: Gateway, idp: IdP, holder: Key) -> None:
    """Asserts: more than one DPoP header field → 401 (RFC 9449 section 4.3, check 1)."""
    token = bound_token(idp, dpop_gw, holder)
    url = dpop_gw.endpoint("demo")
    with Mcp(url) as client:
        headers = client.headers(auth=lambda _m, _u: {"authorization": f"DPoP {token}"}, session_id=None)
        raw = list(headers.items()) + [("dpop", dpop_proof(holder, "POST", url, access_token=token)),
                                       ("dpop", dpop_proof(holder, "POST", url, access_token=token))]
        resp = client.http.post(url, content=b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":'
                                b'{"protocolVersion":"2025-11-25","capabilities":{},'
                                b'"clientInfo":{"name":"t","version":"1"}}}', headers=raw)
    assert_dpop_refused(resp)
