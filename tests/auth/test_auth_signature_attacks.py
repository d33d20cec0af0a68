"""Forged and confused signatures, header tricks and JWKS abuse: every one must end in 401."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from palisade_auth import (
    IdP,
    Gateway,
    KeySet,
    Mcp,
    StartGateway,
    assert_audit_failure,
    assert_invalid_token,
    b64url,
    b64url_decode,
    bearer,
    claims,
    compact_json,
    describe,
    ec_key,
    gateway_config,
    jws,
    mint,
    rpc_result,
    tool_text,
)


def refused(gw: Gateway, token: str, case: str, *, endpoint: str = "demo") -> None:
    """initialize with ``token`` → 401 Bearer invalid_token with resource_metadata, and an audit line."""
    mark = gw.mark()
    with Mcp(gw.endpoint(endpoint), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw, endpoint=endpoint)
    assert_audit_failure(gw, case, mark)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signature", ["empty", "garbage"])
def test_alg_none_is_refused(gw: Gateway, idp: IdP, alg: str, signature: str) -> None:
    """Asserts: an unsigned token (`alg: none` in any case, empty or junk signature) → 401 invalid_token."""
    body = claims(idp.issuer, gw.endpoint("demo"))
    token = jws({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}, body, None, alg="none")
    if signature == "garbage":
        token += b64url(b"not a signature")
    refused(gw, token, "alg_none")


@pytest.mark.parametrize("variant", ["pem", "pem-no-trailing-newline", "jwk-json"])
def test_hs256_signed_with_the_public_key_is_refused(gw: Gateway, idp: IdP, keys: KeySet, variant: str) -> None:
    """Asserts: alg confusion. HS256 keyed with the issuer's *public* RSA key (as PEM, or its JWK JSON),
    with the RSA key's kid, is not verified as HMAC → 401 invalid_token."""
    secret = {
        "pem": keys.rsa.public_pem(),
        "pem-no-trailing-newline": keys.rsa.public_pem().rstrip(b"\n"),
        "jwk-json": json.dumps(keys.rsa.public_jwk()).encode(),
    }[variant]
    token = jws({"alg": "HS256", "typ": "at+jwt", "kid": keys.rsa.kid}, claims(idp.issuer, gw.endpoint("demo")),
                secret)
    refused(gw, token, "hs256_public_key")


def test_algorithm_not_configured_for_the_issuer(idp: IdP, keys: KeySet, start_gateway: StartGateway) -> None:
    """Asserts: the issuer allows only RS256; a correctly signed ES256 token with a published key → 401.
    (Algorithms come from the config, never from the token.)"""
    gw = start_gateway(gateway_config([idp.issuer_entry(algorithms=["RS256"])]))
    refused(gw, idp.token(gw.endpoint("demo"), alg="ES256"), "alg_not_allowed")
    # and the configured one still works
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo"), alg="RS256"))) as client:
        rpc_result(client.initialize())


@pytest.mark.parametrize("header_alg,kid", [("ES256", "rsa-1"), ("RS256", "ec-1"), ("EdDSA", "ec-1")])
def test_alg_and_key_type_mismatch(gw: Gateway, idp: IdP, keys: KeySet, header_alg: str, kid: str) -> None:
    """Asserts: a token whose header `alg` does not fit the key type its `kid` names → 401
    (signed with an attacker key of the header's type)."""
    token = mint(keys.attacker_for_alg(header_alg), claims(idp.issuer, gw.endpoint("demo")), alg=header_alg, kid=kid)
    refused(gw, token, "alg_key_mismatch")


@pytest.mark.parametrize("how,case", [
    ("tampered-payload", "bad_signature"),
    ("attacker-key-with-trusted-kid", "bad_signature"),
    ("stripped-signature", "malformed_or_bad_signature"),
])
def test_bad_signature(gw: Gateway, idp: IdP, keys: KeySet, how: str, case: str) -> None:
    """Asserts: a valid token's payload swapped (sub=admin), an attacker signature under a trusted kid,
    or a removed signature → 401 invalid_token."""
    good = idp.token(gw.endpoint("demo"), alg="RS256")
    head, _, sig = good.split(".")
    if how == "tampered-payload":
        token = ".".join([head, b64url(compact_json(claims(idp.issuer, gw.endpoint("demo"), sub="admin"))), sig])
    elif how == "attacker-key-with-trusted-kid":
        token = mint(keys.attacker_rsa, claims(idp.issuer, gw.endpoint("demo")), alg="RS256", kid=keys.rsa.kid)
    else:
        token = f"{head}.{good.split('.')[1]}."
    refused(gw, token, case)


def test_unknown_kid_flood_is_rate_limited(gw: Gateway, idp: IdP, keys: KeySet) -> None:
    """Asserts: 50 tokens with random unknown kids → 50 × 401, while the JWKS is fetched at most 3 times
    (refreshes on unknown kid are rate-limited per issuer); a valid token still works afterwards."""
    mark = gw.mark()
    statuses = []
    with Mcp(gw.endpoint("demo"), keepalive=False) as client:
        for _ in range(50):
            kid = uuid.uuid4().hex
            token = mint(keys.attacker_rsa, claims(idp.issuer, gw.endpoint("demo")), alg="RS256", kid=kid)
            resp = client.initialize(auth=bearer(token))
            statuses.append(resp.status_code)
            if resp.status_code != 401:
                pytest.fail(f"unknown kid accepted or mis-refused: {describe(resp)}")
        assert_invalid_token(resp, gw)
        # The gateway is still healthy for a good token (also settles any refresh in flight).
        client.auth = bearer(idp.token(gw.endpoint("demo")))
        assert tool_text(_initialized(client).call_tool("echo", {"text": "after flood"})) == "after flood"
    assert statuses == [401] * 50
    hits = idp.server.hits("/jwks.json")
    assert 1 <= hits <= 3, f"JWKS fetched {hits} times for 50 unknown kids (expected 1..3)"
    assert_audit_failure(gw, "unknown_kid", mark)


def _initialized(client: Mcp) -> Mcp:
    rpc_result(client.initialize())
    return client


def test_new_key_is_picked_up_after_rotation(idp: IdP, keys: KeySet, start_gateway: StartGateway) -> None:
    """Asserts: a key added to the JWKS later (rotation) is fetched on an unknown kid once the refresh
    interval (jwks_min_refresh_s = 1 here) allows, so its tokens become valid (polled, 15 s deadline)."""
    gw = start_gateway(gateway_config([idp.issuer_entry(jwks_min_refresh_s=1)]))
    # The gateway knows the current set (a first request makes sure it was fetched).
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo")))) as client:
        rpc_result(client.initialize())
    rotated = ec_key("rotated-ec")
    idp.server.set_json("/jwks.json", {"keys": keys.jwks()["keys"] + [rotated.public_jwk()]})
    deadline = time.monotonic() + 15
    with Mcp(gw.endpoint("demo"), keepalive=False) as client:
        while True:
            token = mint(rotated, claims(idp.issuer, gw.endpoint("demo")), alg="ES256")
            resp = client.initialize(auth=bearer(token))
            if resp.status_code == 200:
                break
            assert resp.status_code == 401, describe(resp)
            assert time.monotonic() < deadline, f"rotated key never accepted: {describe(resp)}"
            time.sleep(0.25)


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk"])
@pytest.mark.parametrize("signer", ["attacker-key", "trusted-key"])
def test_key_location_headers_are_refused(gw: Gateway, idp: IdP, keys: KeySet, member: str, signer: str) -> None:
    """Asserts: a token whose header points at its own key (`jku` / `x5u` URL on a server we control, or an
    embedded `jwk`) is refused, whether signed by that attacker key or by a trusted key; the gateway never
    fetches the jku/x5u URL."""
    key = keys.attacker_ec if signer == "attacker-key" else keys.ec
    idp.server.set_json("/attacker/jwks.json", {"keys": [keys.attacker_ec.public_jwk()]})
    idp.server.set_text("/attacker/cert.pem", keys.attacker_ec.public_pem(), "application/pem-certificate-chain")
    value = {
        "jku": idp.server.url("/attacker/jwks.json"),
        "x5u": idp.server.url("/attacker/cert.pem"),
        "jwk": key.public_jwk(),
    }[member]
    token = mint(key, claims(idp.issuer, gw.endpoint("demo")), alg="ES256", **{member: value})
    refused(gw, token, "forbidden_header_attacker_key" if signer == "attacker-key" else "forbidden_header")
    assert idp.server.hits("/attacker/jwks.json") == 0, "the gateway fetched the token's jku"
    assert idp.server.hits("/attacker/cert.pem") == 0, "the gateway fetched the token's x5u"


def test_unknown_critical_header_is_refused(gw: Gateway, idp: IdP, keys: KeySet) -> None:
    """Asserts: RFC 7515 section 4.1.11. A validly signed token with `crit` naming an extension the gateway
    does not understand → 401."""
    token = mint(keys.ec, claims(idp.issuer, gw.endpoint("demo")), alg="ES256",
                 crit=["urn:palisade:test:unknown"], **{"urn:palisade:test:unknown": True})
    refused(gw, token, "crit")


def test_signature_over_different_bytes(gw: Gateway, idp: IdP) -> None:
    """Asserts: a header re-encoded after signing (same JSON members, different base64 bytes) breaks the
    signature: the gateway verifies the exact bytes it received → 401."""
    token = idp.token(gw.endpoint("demo"), alg="ES256")
    head, body, sig = token.split(".")
    head2 = b64url(json.dumps(json.loads(b64url_decode(head)), indent=1).encode())
    refused(gw, ".".join([head2, body, sig]), "bad_signature")
