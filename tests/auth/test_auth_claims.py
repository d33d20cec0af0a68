"""Claim checks: issuer, audience (RFC 8707 resource binding), lifetime, typ, nesting."""

from __future__ import annotations

import pytest

from palisade_auth import (
    OMIT,
    IdP,
    Gateway,
    KeySet,
    Mcp,
    StartGateway,
    assert_audit_failure,
    assert_invalid_token,
    bearer,
    claims,
    gateway_config,
    mint,
    now,
    rpc_result,
    tool_text,
)


def refused(gw: Gateway, token: str, case: str, *, endpoint: str | None = "demo") -> None:
    """initialize with ``token`` → 401 Bearer invalid_token with resource_metadata, and an audit line."""
    mark = gw.mark()
    with Mcp(gw.endpoint(endpoint), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw, endpoint=endpoint)
    assert_audit_failure(gw, case, mark)


def accepted(gw: Gateway, token: str, endpoint: str = "demo") -> None:
    with Mcp(gw.endpoint(endpoint), bearer(token)) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("echo", {"text": "ok"})) == "ok"


@pytest.mark.parametrize("which", ["other-issuer", "trailing-slash", "other-host"])
def test_wrong_issuer(gw: Gateway, idp: IdP, which: str) -> None:
    """Asserts: `iss` must equal the configured issuer exactly (no trailing-slash or host leniency),
    even when the signature is by the trusted key → 401."""
    iss = {
        "other-issuer": idp.server.url("/other-issuer"),
        "trailing-slash": idp.issuer + "/",
        "other-host": idp.issuer.replace("127.0.0.1", "localhost"),
    }[which]
    token = mint(idp.keys.ec, claims(iss, gw.endpoint("demo")), alg="ES256")
    refused(gw, token, "wrong_issuer")


def test_missing_issuer(gw: Gateway, idp: IdP) -> None:
    """Asserts: a token without `iss` → 401."""
    token = mint(idp.keys.ec, claims(idp.issuer, gw.endpoint("demo"), iss=OMIT), alg="ES256")
    refused(gw, token, "missing_issuer")


def test_untrusted_issuer_with_its_own_jwks(gw: Gateway) -> None:
    """Asserts: a second, unconfigured issuer (its own keys under the same kids, its own JWKS server) → 401,
    and its JWKS is never fetched."""
    other = IdP(KeySet.generate())
    try:
        token = other.token(gw.endpoint("demo"))
        refused(gw, token, "untrusted_issuer")
        assert other.server.hits("/jwks.json") == 0, "the gateway fetched keys of an unconfigured issuer"
    finally:
        other.close()


@pytest.mark.parametrize("which", [
    "other-endpoint", "other-host", "other-port", "aggregated-endpoint", "path-extension", "no-path",
    "api-identifier",
])
def test_audience_of_another_resource(gw: Gateway, idp: IdP, which: str) -> None:
    """Asserts: tokens are bound to the endpoint's canonical URI ({base}/mcp/demo); a token for another
    endpoint, host, port, the aggregated /mcp, a longer path, the bare origin, or an unrelated
    API identifier → 401 invalid_token."""
    base = gw.base
    port = base.rsplit(":", 1)[1]
    aud = {
        "other-endpoint": f"{base}/mcp/other",
        "other-host": f"http://evil.example:{port}/mcp/demo",
        "other-port": "http://127.0.0.1:1/mcp/demo",
        "aggregated-endpoint": f"{base}/mcp",
        "path-extension": f"{base}/mcp/demo/extra",
        "no-path": base,
        "api-identifier": "api://palisade",
    }[which]
    refused(gw, idp.token(aud), "wrong_audience")


def test_token_for_demo_refused_on_aggregated_endpoint(gw: Gateway, idp: IdP) -> None:
    """Asserts: the binding works the other way too: an /mcp/demo token on /mcp → 401."""
    refused(gw, idp.token(gw.endpoint("demo")), "wrong_audience", endpoint=None)


def test_missing_audience(gw: Gateway, idp: IdP) -> None:
    """Asserts: a token without `aud` → 401."""
    refused(gw, idp.token(None), "missing_audience")


def test_empty_audience_array(gw: Gateway, idp: IdP) -> None:
    """Asserts: `aud: []` counts as no audience → 401."""
    refused(gw, idp.token([]), "missing_audience")


def test_configured_extra_audience(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: `audiences = ["api://palisade"]` on the issuer makes that audience acceptable too,
    while unrelated audiences are still refused."""
    gw = start_gateway(gateway_config([idp.issuer_entry(audiences=["api://palisade"])]))
    accepted(gw, idp.token("api://palisade"))
    refused(gw, idp.token("api://something-else"), "wrong_audience")


def test_expired(gw: Gateway, idp: IdP) -> None:
    """Asserts: `exp` 60 s in the past (leeway 5 s) → 401."""
    t = now()
    refused(gw, idp.token(gw.endpoint("demo"), iat=t - 360, exp=t - 60), "expired")


def test_expired_within_leeway_is_accepted(gw: Gateway, idp: IdP) -> None:
    """Asserts: `leeway_s = 5` is applied: a token that expired 1 s before minting is still accepted by a
    request sent right away."""
    t = now()
    token = idp.token(gw.endpoint("demo"), iat=t - 60, exp=t - 1)
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert resp.status_code == 200, f"token expired 1 s ago refused despite leeway_s = 5: {resp.status_code}"


def test_not_yet_valid(gw: Gateway, idp: IdP) -> None:
    """Asserts: `nbf` 120 s in the future (leeway 5 s) → 401."""
    t = now()
    refused(gw, idp.token(gw.endpoint("demo"), nbf=t + 120, exp=t + 600), "not_yet_valid")


def test_missing_expiry(gw: Gateway, idp: IdP) -> None:
    """Asserts: a token without `exp` (never expiring) → 401."""
    refused(gw, idp.token(gw.endpoint("demo"), exp=OMIT), "missing_exp")


@pytest.mark.parametrize("typ,ok", [("at+jwt", True), ("JWT", False), (None, False), ("dpop+jwt", False)],
                         ids=["at+jwt", "JWT", "no-typ", "dpop+jwt"])
def test_typ_required_when_configured(idp: IdP, start_gateway: StartGateway, typ: str | None, ok: bool) -> None:
    """Asserts: with `typ = "at+jwt"` on the issuer (RFC 9068), a token typed at+jwt works; untyped,
    `JWT` or `dpop+jwt` tokens → 401."""
    gw = start_gateway(gateway_config([idp.issuer_entry(typ="at+jwt")]))
    token = idp.token(gw.endpoint("demo"), typ=typ)
    if ok:
        accepted(gw, token)
    else:
        refused(gw, token, "wrong_typ")


def test_nested_jwt_is_refused(gw: Gateway, idp: IdP, keys: KeySet) -> None:
    """Asserts: a JWS with `cty: JWT` whose payload is itself a valid access token (both signed by the
    trusted issuer) is not unwrapped → 401."""
    inner = idp.token(gw.endpoint("demo"), alg="ES256")
    outer = mint(keys.rsa, inner.encode(), alg="RS256", cty="JWT")
    refused(gw, outer, "nested_jwt_payload")


def test_cty_jwt_header_is_refused(gw: Gateway, idp: IdP, keys: KeySet) -> None:
    """Asserts: a validly signed token with good claims but `cty: JWT` (announcing nesting) → 401,
    audited nested_jwt."""
    refused(gw, mint(keys.ec, claims(idp.issuer, gw.endpoint("demo")), alg="ES256", cty="JWT"), "nested_jwt")
