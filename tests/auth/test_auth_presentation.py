"""How a token is presented: missing, in the query string, oversized, malformed; the 401 challenge and
the Protected Resource Metadata (RFC 9728) it points at."""

from __future__ import annotations

import uuid

import httpx2
import pytest

from palisade_auth import (
    REQUEST_TIMEOUT,
    IdP,
    Gateway,
    Mcp,
    StartGateway,
    assert_audit_failure,
    assert_invalid_token,
    assert_unauthenticated,
    b64url,
    bearer,
    claims,
    describe,
    find_challenge,
    gateway_config,
    mint,
    no_auth,
    rpc_result,
)


def test_missing_token_challenge(gw: Gateway) -> None:
    """Asserts: no Authorization header → 401 `Bearer` challenge without `error`, with
    resource_metadata = {base}/.well-known/oauth-protected-resource/mcp/demo and scope="mcp"; audited."""
    mark = gw.mark()
    with Mcp(gw.endpoint("demo")) as client:
        resp = client.initialize()
    assert_unauthenticated(resp, gw, endpoint="demo", scopes={"mcp"})
    assert not resp.headers.get("mcp-session-id"), "no session may be created without a token"
    assert_audit_failure(gw, "missing_token", mark)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_missing_token_on_other_methods(gw: Gateway, method: str) -> None:
    """Asserts: GET (SSE stream) and DELETE (end session) on the endpoint also need a token → 401."""
    with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
        resp = http.request(method, gw.endpoint("demo"), headers={"accept": "text/event-stream",
                                                                  "mcp-protocol-version": "2025-11-25"})
    assert_unauthenticated(resp, gw, endpoint="demo")


def test_missing_token_on_aggregated_endpoint(gw: Gateway) -> None:
    """Asserts: /mcp challenges with its own resource_metadata ({base}/.well-known/oauth-protected-resource/mcp)."""
    with Mcp(gw.endpoint(None)) as client:
        resp = client.initialize()
    assert_unauthenticated(resp, gw, endpoint=None)


def test_endpoint_scopes_in_challenge(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: the 401 challenge's `scope` lists the global and the endpoint's extra required scopes."""
    gw = start_gateway(gateway_config([idp.issuer_entry()], demo_auth={"required_scopes": ["demo:use"]}))
    with Mcp(gw.endpoint("demo")) as client:
        resp = client.initialize()
    assert_unauthenticated(resp, gw, endpoint="demo", scopes={"mcp", "demo:use"})


@pytest.mark.parametrize("with_header", [False, True], ids=["query-only", "query-and-header"])
@pytest.mark.parametrize("param", ["access_token"])
def test_token_in_query_string_is_refused(gw: Gateway, idp: IdP, with_header: bool, param: str) -> None:
    """Asserts: `?access_token=<valid token>` → 400 with `error="invalid_request"` (RFC 6750 query
    transport is not supported), also when a valid header token is sent as well; audited token_in_query."""
    token = idp.token(gw.endpoint("demo"))
    mark = gw.mark()
    with Mcp(gw.endpoint("demo"), bearer(token) if with_header else no_auth) as client:
        resp = client.post(client.initialize_message(), params={param: token}, session_id=None)
    assert resp.status_code == 400, f"expected 400, got {describe(resp)}"
    c = find_challenge(resp, ["Bearer"])
    assert c is not None and c.params.get("error") == "invalid_request", (
        f"expected Bearer error=\"invalid_request\": {describe(resp)}")
    assert not resp.headers.get("mcp-session-id")
    assert_audit_failure(gw, "token_in_query", mark)


def test_huge_token_is_refused_without_server_error(gw: Gateway, idp: IdP) -> None:
    """Asserts: a validly signed token with a 64 KiB claim → 401 (token_too_large), or 413/431 if the HTTP
    layer refuses the header first; never 5xx. The gateway keeps serving afterwards."""
    mark = gw.mark()
    token = idp.token(gw.endpoint("demo"), pad="A" * 65536)
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert resp.status_code in (401, 413, 431), f"expected 401/413/431, got {describe(resp)}"
    if resp.status_code == 401:
        assert_invalid_token(resp, gw)
        assert_audit_failure(gw, "token_too_large", mark)
    with Mcp(gw.endpoint("demo"), bearer(idp.token(gw.endpoint("demo")))) as client:
        rpc_result(client.initialize())


def test_token_over_max_token_bytes(gw: Gateway, idp: IdP) -> None:
    """Asserts: a validly signed 16 KiB token (over the default max_token_bytes = 8 KiB, well under any HTTP
    header limit) → 401 invalid_token, audited token_too_large."""
    mark = gw.mark()
    token = idp.token(gw.endpoint("demo"), pad="B" * 16384)
    assert 16384 < len(token) < 32768
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw)
    assert_audit_failure(gw, "token_too_large", mark)


def _malformed(idp: IdP, gw: Gateway, kind: str) -> str:
    good = idp.token(gw.endpoint("demo"))
    head, body, sig = good.split(".")
    return {
        "bad-base64": "a.b!.c",
        "truncated": good[: len(good) // 2],
        "two-segments": f"{head}.{body}",
        "four-segments": f"{good}.{sig}",
        "five-segments": f"{head}.{body}.{sig}.{sig}.{sig}",
        "empty-segments": "..",
        "header-not-json": f"{b64url(b'not json')}.{body}.{sig}",
        "header-not-object": f"{b64url(b'[1,2]')}.{body}.{sig}",
        "payload-not-json": f"{head}.{b64url(b'{oops')}.{sig}",
        "padding-in-segment": f"{head}=.{body}.{sig}",
        "whitespace-inside": f"{head}. {body}.{sig}",
        "not-a-jwt": "opaque-token-value-1234567890",
    }[kind]


@pytest.mark.parametrize("kind", [
    "bad-base64", "truncated", "two-segments", "four-segments", "five-segments", "empty-segments",
    "header-not-json", "header-not-object", "payload-not-json", "padding-in-segment", "whitespace-inside",
    "not-a-jwt",
])
def test_malformed_token(gw: Gateway, idp: IdP, kind: str) -> None:
    """Asserts: a token that is not a well-formed compact JWS → 401 Bearer invalid_token (never 5xx),
    audited malformed_token."""
    mark = gw.mark()
    token = _malformed(idp, gw, kind)
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw)
    # Segments that still decode may reach signature verification instead.
    lenient = kind in ("truncated", "padding-in-segment")
    assert_audit_failure(gw, "malformed_or_bad_signature" if lenient else "malformed_token", mark)


@pytest.mark.parametrize("header", ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer a b", "Token abc"])
def test_unusable_authorization_header(gw: Gateway, header: str) -> None:
    """Asserts: an Authorization header that carries no bearer token (other scheme, empty token) → 401 with a
    Bearer challenge carrying resource_metadata (error is optional here)."""
    with Mcp(gw.endpoint("demo"), lambda _m, _u: {"authorization": header}) as client:
        resp = client.initialize()
    assert resp.status_code in (400, 401), f"expected 401 (or 400 invalid_request): {describe(resp)}"
    c = find_challenge(resp, ["Bearer"])
    assert c is not None, f"no Bearer challenge: {describe(resp)}"
    assert c.params.get("resource_metadata") == gw.prm_url("demo"), describe(resp)
    if "error" in c.params:
        assert c.params["error"] in ("invalid_token", "invalid_request"), describe(resp)


def test_protected_resource_metadata_for_endpoint(gw: Gateway, idp: IdP) -> None:
    """Asserts: the document the challenge points at is public (no token) and describes /mcp/demo:
    resource, authorization_servers = [issuer], scopes_supported ⊇ {mcp}, bearer_methods_supported = [header]."""
    with Mcp(gw.endpoint("demo")) as client:
        challenge = assert_unauthenticated(client.initialize(), gw)
    with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
        resp = http.get(challenge.params["resource_metadata"])
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("content-type", "").startswith("application/json"), describe(resp)
    doc = resp.json()
    assert doc.get("resource") == gw.endpoint("demo"), doc
    assert doc.get("authorization_servers") == [idp.issuer], doc
    assert "mcp" in doc.get("scopes_supported", []), doc
    assert doc.get("bearer_methods_supported") == ["header"], doc


def test_protected_resource_metadata_for_root_and_aggregated(gw: Gateway, idp: IdP) -> None:
    """Asserts: /.well-known/oauth-protected-resource (the gateway root) and .../mcp (aggregated endpoint)
    exist, need no token, and name the issuer; the aggregated one's resource is {base}/mcp."""
    with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
        root = http.get(f"{gw.base}/.well-known/oauth-protected-resource")
        agg = http.get(gw.prm_url(None))
        unknown = http.get(f"{gw.base}/.well-known/oauth-protected-resource/mcp/no-such-upstream")
    assert root.status_code == 200, describe(root)
    assert root.json().get("resource") in (gw.base, gw.base + "/", gw.endpoint(None)), root.json()
    assert root.json().get("authorization_servers") == [idp.issuer], root.json()
    assert agg.status_code == 200, describe(agg)
    assert agg.json().get("resource") == gw.endpoint(None), agg.json()
    assert unknown.status_code == 404, f"metadata for an unknown endpoint: {describe(unknown)}"


@pytest.mark.parametrize("refusal", ["wrong-audience", "unknown-kid", "missing-token"])
def test_refusals_keep_connections_usable(gw: Gateway, idp: IdP, refusal: str) -> None:
    """Asserts: 100 refused POSTs in a row on one keep-alive connection never end in a connection the
    gateway closes without a response; if the gateway wants to close after a refusal it must say
    `Connection: close` (HTTP clients reuse pooled connections, and a silently dropped one fails the
    client's next request)."""
    def headers() -> dict[str, str]:
        if refusal == "wrong-audience":
            return {"authorization": f"Bearer {idp.token('https://elsewhere.example/mcp')}"}
        if refusal == "unknown-kid":
            forged = mint(idp.keys.attacker_ec, claims(idp.issuer, gw.endpoint("demo")), alg="ES256",
                          kid="unknown-" + uuid.uuid4().hex)
            return {"authorization": f"Bearer {forged}"}
        return {}

    dropped = []
    with Mcp(gw.endpoint("demo"), lambda _m, _u: headers()) as client:
        for i in range(100):
            try:
                resp = client.post(client.initialize_message(), session_id=None)
            except httpx2.RemoteProtocolError as exc:
                dropped.append(f"request {i}: {exc}")
                continue
            assert resp.status_code == 401, describe(resp)
            if resp.headers.get("connection", "").lower() == "close":
                continue  # announced; the client opens a new connection
    assert not dropped, (f"{len(dropped)} of 100 requests after a refusal hit a connection the gateway had "
                         f"closed without `Connection: close`: {dropped[:3]}")
