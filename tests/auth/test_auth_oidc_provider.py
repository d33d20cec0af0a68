"""A real OpenID provider (oidc-provider, tests/node/oidc/provider.mjs) in front of the gateway, and the
official Python MCP SDK as the client: the MCP authorization flow end to end.

The gateway is configured with the provider's issuer and no jwks_uri (OpenID Connect discovery).
The client starts from the 401 challenge: resource_metadata → Protected Resource Metadata →
authorization server → its discovery document → token endpoint (client_credentials, RFC 8707 resource).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
import mcp.types as types

from palisade_auth import (
    REPO,
    REQUEST_TIMEOUT,
    Gateway,
    Mcp,
    Process,
    StartError,
    StartGateway,
    assert_audit_failure,
    assert_insufficient_scope,
    assert_invalid_token,
    assert_unauthenticated,
    bearer,
    decode_unverified,
    gateway_config,
    node_bin,
    wait_for_keys,
)

PROVIDER = REPO / "tests" / "node" / "oidc" / "provider.mjs"
CLIENT_ID = "palisade-test"
CLIENT_SECRET = "palisade-test-secret"


class OidcProvider:
    def __init__(self) -> None:
        if not (REPO / "tests" / "node" / "node_modules" / "oidc-provider").is_dir():
            raise StartError("tests/node/node_modules/oidc-provider is missing (npm ci in tests/node)")
        self.process = Process([node_bin(), str(PROVIDER), "0"], cwd=REPO / "tests" / "node",
                               env={"OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": CLIENT_SECRET},
                               name="oidc-provider")
        try:
            self.issuer = self.process.wait_for_stdout("oidc-provider listening on ")
        except StartError:
            self.process.stop()
            raise

    def token(self, token_endpoint: str, resource: str | None, scope: str = "mcp") -> dict:
        data = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            data["resource"] = resource
        with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
            resp = http.post(token_endpoint, data=data, auth=(CLIENT_ID, CLIENT_SECRET))
        assert resp.status_code == 200, f"token endpoint: HTTP {resp.status_code} {resp.text}"
        return resp.json()

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    try:
        p = OidcProvider()
    except StartError as exc:
        pytest.fail(f"oidc-provider did not start: {exc}", pytrace=False)
    yield p
    p.stop()
    print(p.process.describe())


@pytest.fixture
def oidc_gw(provider: OidcProvider, start_gateway: StartGateway) -> Gateway:
    """Gateway trusting the provider by issuer only (discovery finds the JWKS); RFC 9068 typ required."""
    return start_gateway(gateway_config([{"issuer": provider.issuer, "algorithms": ["ES256", "RS256"],
                                          "typ": "at+jwt"}]))


def discover_token_endpoint(gw: Gateway) -> tuple[str, str, str]:
    """Follow the 401 challenge to the token endpoint: (resource, issuer, token_endpoint)."""
    with Mcp(gw.endpoint("demo")) as client:
        challenge = assert_unauthenticated(client.initialize(), gw)
    with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
        prm = http.get(challenge.params["resource_metadata"]).json()
        issuer = prm["authorization_servers"][0]
        meta = http.get(issuer.rstrip("/") + "/.well-known/openid-configuration").json()
    assert meta["issuer"] == issuer, meta
    assert "client_credentials" in meta.get("grant_types_supported", []), meta
    return prm["resource"], issuer, meta["token_endpoint"]


@pytest.mark.anyio
async def test_sdk_client_through_gateway_with_provider_token(provider: OidcProvider, oidc_gw: Gateway) -> None:
    """Asserts: from the 401 challenge alone the client finds the provider, gets a client-credentials JWT
    for resource={base}/mcp/demo (aud = that URI, typ at+jwt, scope mcp), and the official MCP SDK client
    initializes, lists tools and calls echo through Palisade with it."""
    resource, issuer, token_endpoint = discover_token_endpoint(oidc_gw)
    assert resource == oidc_gw.endpoint("demo")
    assert issuer == provider.issuer
    grant = provider.token(token_endpoint, resource)
    token = grant["access_token"]
    header, payload = decode_unverified(token)
    assert header.get("typ") == "at+jwt" and payload.get("aud") == resource, (header, payload)
    assert "mcp" in payload.get("scope", "").split(), payload
    wait_for_keys(oidc_gw, token)  # discovery and the JWKS fetch run in the background after start

    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"},
                              timeout=httpx2.Timeout(10.0, read=REQUEST_TIMEOUT * 2))
    with anyio.fail_after(60):
        async with http:
            async with streamable_http_client(resource, http_client=http) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT,
                                         client_info=types.Implementation(name="palisade-auth-e2e",
                                                                          version="0.1.0")) as session:
                    init = await session.initialize()
                    assert init.server_info.name == "palisade-demo", init
                    tools = await session.list_tools()
                    assert {"echo", "add"} <= {t.name for t in tools.tools}
                    result = await session.call_tool("echo", {"text": "via oidc-provider"})
                    assert not result.is_error, result
                    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
                    assert texts == ["via oidc-provider"], result


def test_provider_token_for_another_resource_is_refused(provider: OidcProvider, oidc_gw: Gateway) -> None:
    """Asserts: a genuine provider token issued for {base}/mcp/other → 401 invalid_token at /mcp/demo
    (audited wrong_audience)."""
    _, _, token_endpoint = discover_token_endpoint(oidc_gw)
    token = provider.token(token_endpoint, oidc_gw.endpoint("other"))["access_token"]
    wait_for_keys(oidc_gw, token)
    mark = oidc_gw.mark()
    with Mcp(oidc_gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, oidc_gw)
    assert_audit_failure(oidc_gw, "wrong_audience", mark)


def test_provider_token_without_scope_is_403(provider: OidcProvider, oidc_gw: Gateway) -> None:
    """Asserts: a genuine provider token for the right resource but without the `mcp` scope → 403
    insufficient_scope."""
    _, _, token_endpoint = discover_token_endpoint(oidc_gw)
    grant = provider.token(token_endpoint, oidc_gw.endpoint("demo"), scope="openid")
    wait_for_keys(oidc_gw, grant["access_token"])
    with Mcp(oidc_gw.endpoint("demo"), bearer(grant["access_token"])) as client:
        resp = client.initialize()
    assert_insufficient_scope(resp, oidc_gw, missing={"mcp"}, required={"mcp"})


def test_provider_opaque_token_is_refused(provider: OidcProvider, oidc_gw: Gateway) -> None:
    """Asserts: without a resource the provider issues an opaque token; with no introspection configured the
    gateway refuses it → 401 invalid_token."""
    _, _, token_endpoint = discover_token_endpoint(oidc_gw)
    token = provider.token(token_endpoint, None)["access_token"]
    assert token.count(".") != 2, "expected an opaque token"
    mark = oidc_gw.mark()
    with Mcp(oidc_gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, oidc_gw)
    assert_audit_failure(oidc_gw, "opaque_token", mark)


def test_provider_script_exists() -> None:
    """Asserts: the provider script is where the fixture expects it (a clear failure if it moved)."""
    assert PROVIDER.is_file(), PROVIDER
    assert os.access(node_bin(), os.X_OK) or node_bin() == "node", node_bin()
