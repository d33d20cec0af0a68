"""The client's credentials stop at the gateway: nothing of them reaches an upstream."""

from __future__ import annotations

import json

from palisade_auth import (
    HeaderEchoServer,
    IdP,
    Key,
    Mcp,
    StartGateway,
    bearer,
    dpop_auth,
    ec_key,
    gateway_config,
    rpc_result,
    tool_text,
)


def upstream_headers(client: Mcp) -> dict[str, str]:
    rpc_result(client.initialize())
    text = tool_text(client.call_tool("request_headers", {}))
    headers = json.loads(text)
    assert isinstance(headers, dict) and headers, f"request_headers returned {text!r}"
    return {k.lower(): v for k, v in headers.items()}


def test_bearer_token_not_forwarded(idp: IdP, start_gateway: StartGateway, echo_http: HeaderEchoServer) -> None:
    """Asserts: calling the HTTP upstream's `request_headers` tool through /mcp/echo-http with a bearer token:
    the headers the upstream received have no Authorization header and do not contain the token."""
    gw = start_gateway(gateway_config([idp.issuer_entry()],
                                      upstreams={"echo-http": {"transport": "http", "url": echo_http.url}}))
    token = idp.token(gw.endpoint("echo-http"))
    with Mcp(gw.endpoint("echo-http"), bearer(token)) as client:
        seen = upstream_headers(client)
    assert "authorization" not in seen, f"Authorization reached the upstream: {seen}"
    dump = json.dumps(seen)
    assert token not in dump and token.split(".")[2] not in dump, "the client's token reached the upstream"


def test_dpop_credentials_not_forwarded(idp: IdP, start_gateway: StartGateway, echo_http: HeaderEchoServer) -> None:
    """Asserts: with a DPoP-bound token, neither the token nor the DPoP proof header reaches the upstream."""
    gw = start_gateway(gateway_config([idp.issuer_entry()], upstreams={
        "echo-http": {"transport": "http", "url": echo_http.url, "auth": {"require_dpop": True}}}))
    holder: Key = ec_key("passthrough-holder")
    token = idp.token(gw.endpoint("echo-http"), cnf={"jkt": holder.thumbprint()})
    with Mcp(gw.endpoint("echo-http"), dpop_auth(token, holder)) as client:
        seen = upstream_headers(client)
    assert "authorization" not in seen and "dpop" not in seen, f"client credentials reached the upstream: {seen}"
    assert token not in json.dumps(seen)
