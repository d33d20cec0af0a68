"""Issuer metadata discovery when `jwks_uri` is not configured (RFC 8414 and OpenID Connect Discovery)."""

from __future__ import annotations

from pathlib import Path

import httpx2

from palisade_auth import (
    ALL_ALGORITHMS,
    IdP,
    Gateway,
    DocServer,
    KeySet,
    Mcp,
    StartError,
    StartGateway,
    assert_audit_failure,
    assert_invalid_token,
    bearer,
    claims,
    describe,
    gateway_config,
    mint,
    tool_text,
    wait_until,
)


def metadata(issuer: str, jwks_uri: str) -> dict:
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "token_endpoint": issuer + "/token",
        "response_types_supported": ["code"],
        "grant_types_supported": ["client_credentials"],
    }


def discovering_gateway(start_gateway: StartGateway, issuer: str) -> Gateway:
    return start_gateway(gateway_config([{"issuer": issuer, "algorithms": list(ALL_ALGORITHMS)}]))


def works(gw: Gateway, keys: KeySet, issuer: str, srv: DocServer, jwks_path: str) -> None:
    """Once the gateway has fetched the discovered jwks_uri, a token of the issuer is accepted.

    Discovery runs in the background after the ready line; the test waits for its observable end (the
    jwks_uri fetched) and then for a short deadline, well under the 30 s refresh interval, so only a
    first discovery that worked can pass. (Requests racing the initial fetch are covered by
    test_auth_valid_tokens.py::test_request_while_keys_load_is_not_refused.)
    """
    wait_until(lambda: srv.hits(jwks_path) >= 1, timeout=10, what=f"the gateway to fetch {jwks_path}")
    token = mint(keys.ec, claims(issuer, gw.endpoint("demo")), alg="ES256")
    with Mcp(gw.endpoint("demo"), bearer(token), keepalive=False) as client:
        last: list[httpx2.Response] = []

        def initialized() -> bool:
            last[:] = [client.initialize()]
            return last[0].status_code == 200

        try:
            wait_until(initialized, timeout=5, what="a token of the discovered issuer to be accepted", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {describe(last[0])}") from None
        assert tool_text(client.call_tool("echo", {"text": "discovered"})) == "discovered"


def test_rfc8414_path_insertion(idp: IdP, keys: KeySet, start_gateway: StartGateway) -> None:
    """Asserts: for issuer {base}/tenant-a the gateway finds RFC 8414 metadata at
    {base}/.well-known/oauth-authorization-server/tenant-a, uses its jwks_uri (served at a path the gateway
    could not guess), and accepts tokens; PRM lists that issuer."""
    srv = idp.server
    issuer = srv.url("/tenant-a")
    srv.set_json("/.well-known/oauth-authorization-server/tenant-a", metadata(issuer, srv.url("/keys/a")))
    srv.set_json("/keys/a", keys.jwks())
    gw = discovering_gateway(start_gateway, issuer)
    works(gw, keys, issuer, srv, "/keys/a")
    assert srv.hits("/.well-known/oauth-authorization-server/tenant-a") >= 1
    assert srv.hits("/jwks.json") == 0
    with httpx2.Client() as http:
        prm = http.get(gw.prm_url("demo")).json()
    assert prm.get("authorization_servers") == [issuer], prm


def test_openid_configuration_path_insertion(idp: IdP, keys: KeySet, start_gateway: StartGateway) -> None:
    """Asserts: with no RFC 8414 document, {base}/.well-known/openid-configuration/tenant-b is used."""
    srv = idp.server
    issuer = srv.url("/tenant-b")
    srv.set_json("/.well-known/openid-configuration/tenant-b", metadata(issuer, srv.url("/keys/b")))
    srv.set_json("/keys/b", keys.jwks())
    gw = discovering_gateway(start_gateway, issuer)
    works(gw, keys, issuer, srv, "/keys/b")


def test_openid_configuration_appended(idp: IdP, keys: KeySet, start_gateway: StartGateway) -> None:
    """Asserts: OpenID Connect Discovery's own form, {issuer}/.well-known/openid-configuration, is the last
    fallback and works; the earlier candidates were tried first (in order)."""
    srv = idp.server
    issuer = srv.url("/tenant-c")
    srv.set_json("/tenant-c/.well-known/openid-configuration", metadata(issuer, srv.url("/keys/c")))
    srv.set_json("/keys/c", keys.jwks())
    gw = discovering_gateway(start_gateway, issuer)
    works(gw, keys, issuer, srv, "/keys/c")
    assert srv.hits("/.well-known/oauth-authorization-server/tenant-c") >= 1
    assert srv.hits("/.well-known/openid-configuration/tenant-c") >= 1


def test_metadata_for_another_issuer_is_not_trusted(idp: IdP, keys: KeySet, tmp_path: Path) -> None:
    """Asserts: RFC 8414 section 3.3. Metadata whose `issuer` differs from the configured issuer is not used:
    its jwks_uri is never fetched and tokens are refused with 401 (or the gateway refuses to start)."""
    srv = idp.server
    issuer = srv.url("/tenant-d")
    srv.set_json("/.well-known/oauth-authorization-server/tenant-d",
                 metadata(srv.url("/impostor"), srv.url("/keys/impostor")))
    srv.set_json("/keys/impostor", keys.jwks())
    try:
        gw = Gateway(gateway_config([{"issuer": issuer, "algorithms": list(ALL_ALGORITHMS)}]), tmp_path)
    except StartError:
        assert srv.hits("/keys/impostor") == 0
        return
    try:
        mark = gw.mark()
        token = mint(keys.ec, claims(issuer, gw.endpoint("demo")), alg="ES256")
        with Mcp(gw.endpoint("demo"), bearer(token)) as client:
            resp = client.initialize()
        assert_invalid_token(resp, gw)
        assert_audit_failure(gw, "discovery_issuer_mismatch", mark)
        assert srv.hits("/keys/impostor") == 0, "jwks_uri of metadata for another issuer was fetched"
    finally:
        gw.stop()
        print(gw.describe())
