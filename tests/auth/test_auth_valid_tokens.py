"""Tokens the gateway must accept: every configured algorithm, audience and scope forms."""

from __future__ import annotations

import pytest

from palisade_auth import (
    ALL_ALGORITHMS,
    IdP,
    Gateway,
    Mcp,
    StartGateway,
    assert_audit_success,
    bearer,
    describe,
    gateway_config,
    rpc_result,
    tool_text,
)


def echo_round_trip(client: Mcp, text: str = "hello palisade") -> None:
    resp = client.initialize()
    result = rpc_result(resp)
    assert result["serverInfo"]["name"] == "palisade-demo", result
    assert client.session_id, "initialize through the gateway should issue an Mcp-Session-Id"
    assert tool_text(client.call_tool("echo", {"text": text})) == text


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
def test_valid_token_each_algorithm_calls_echo(gw: Gateway, idp: IdP, alg: str) -> None:
    """Asserts: a token signed with the issuer's published key (RS256/PS256 with RSA 2048, ES256 with
    P-256, EdDSA with Ed25519) initializes, lists tools and calls echo; the gateway audits auth.success."""
    mark = gw.mark()
    token = idp.token(gw.endpoint("demo"), alg=alg)
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        echo_round_trip(client, f"hi {alg}")
        names = {t["name"] for t in rpc_result(client.list_tools())["tools"]}
        assert {"echo", "add"} <= names, names
    assert_audit_success(gw, mark)


def test_audience_array_containing_the_endpoint_is_accepted(gw: Gateway, idp: IdP) -> None:
    """Asserts: `aud` may be an array; it is enough that one entry is the endpoint's resource URI."""
    token = idp.token(["https://other.example/api", gw.endpoint("demo")])
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        echo_round_trip(client)


def test_scp_array_claim_carries_scopes(gw: Gateway, idp: IdP) -> None:
    """Asserts: scopes are also read from an `scp` array (default scope_claims = ["scope", "scp"])."""
    token = idp.token(gw.endpoint("demo"), scope=None, scp=["mcp", "other"])
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        echo_round_trip(client)


@pytest.mark.parametrize("typ", ["at+jwt", "JWT", None], ids=["at+jwt", "JWT", "no-typ"])
def test_any_typ_accepted_when_not_configured(gw: Gateway, idp: IdP, typ: str | None) -> None:
    """Asserts: without `typ` in the issuer config, the JWT `typ` header is not required."""
    token = idp.token(gw.endpoint("demo"), typ=typ)
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        echo_round_trip(client)


def test_aggregated_endpoint_with_its_own_audience(gw: Gateway, idp: IdP) -> None:
    """Asserts: /mcp (aggregated, tools `<server>__<tool>`) accepts a token whose aud is {base}/mcp."""
    token = idp.token(gw.endpoint(None))
    with Mcp(gw.endpoint(None), bearer(token)) as client:
        rpc_result(client.initialize())
        assert tool_text(client.call_tool("demo__echo", {"text": "agg"})) == "agg"


def test_lowercase_bearer_scheme_is_accepted(gw: Gateway, idp: IdP) -> None:
    """Asserts: the auth scheme is case-insensitive (RFC 9110 section 11.1): `bearer <token>` works."""
    token = idp.token(gw.endpoint("demo"))
    with Mcp(gw.endpoint("demo"), bearer(token, scheme="bearer")) as client:
        echo_round_trip(client)


def test_request_while_keys_load_is_not_refused(idp: IdP, start_gateway: StartGateway) -> None:
    """Asserts: a valid token sent right after the ready line, while the issuer's JWKS is still being
    fetched (the JWKS server answers after 1.5 s), is accepted: the request waits for the in-flight key
    fetch (or the gateway is not ready before its keys are) instead of failing with keys_unavailable."""
    idp.server.set_delay("/jwks.json", 1.5)
    gw = start_gateway(gateway_config([idp.issuer_entry()]), wait_for_keys=False)
    token = idp.token(gw.endpoint("demo"))
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert resp.status_code == 200, f"refused while the first key fetch was in flight: {describe(resp)}"
