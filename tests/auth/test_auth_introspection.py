"""Opaque access tokens checked by RFC 7662 introspection, end to end against a real OpenID provider.

oidc-provider (tests/node/oidc/provider.mjs) issues opaque client_credentials tokens to its opaque client
(``OPAQUE_CLIENT_ID``) for any RFC 8707 resource (``aud`` = the resource, ``sub`` = the client id,
scope ``mcp``), answers introspection only for the resource server's client (``GATEWAY_CLIENT_ID``), revokes
tokens at its revocation endpoint and prints one stdout line per introspection call, which is how these
tests count what the gateway asked.

The gateway has ``[auth.introspection]`` and no ``[[auth.issuers]]``, so every bearer token, JWT or not,
is introspected: it posts the token with HTTP Basic credentials (secret from the environment), requires
``active: true``, an ``exp`` in the future, an ``aud`` naming the endpoint, a ``sub``, and ``iss`` = the
configured issuer; answers are cached at most ``cache_max_s``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

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
    assert_audit_success,
    assert_invalid_token,
    audit_field,
    bearer,
    describe,
    gateway_config,
    node_bin,
    tool_text,
    wait_until,
)

PROVIDER = REPO / "tests" / "node" / "oidc" / "provider.mjs"
CLIENT_SECRET = "palisade-intro-client-secret"
JWT_CLIENT_ID = "palisade-intro-jwt"  # the provider's JWT client (OIDC_CLIENT_ID)
OPAQUE_CLIENT_ID = "palisade-intro-opaque"  # gets opaque tokens; `sub` of its tokens
SENTINEL_CLIENT_ID = JWT_CLIENT_ID + "-post"  # the provider's client_secret_post client: only for sentinels
GATEWAY_CLIENT_ID = "palisade-gateway"
GATEWAY_CLIENT_SECRET = "gw-" + secrets.token_urlsafe(18)
SECRET_ENV = "PALISADE_INTROSPECTION_SECRET"
INTROSPECTION_LINE = "oidc-provider introspection "


class IntrospectingProvider:
    """oidc-provider with opaque tokens, introspection and revocation; counts introspection calls."""

    def __init__(self) -> None:
        if not (REPO / "tests" / "node" / "node_modules" / "oidc-provider").is_dir():
            raise StartError("tests/node/node_modules/oidc-provider is missing (npm ci in tests/node)")
        env = {
            "OIDC_CLIENT_ID": JWT_CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OPAQUE_CLIENT_ID": OPAQUE_CLIENT_ID,
            "OIDC_GATEWAY_CLIENT_ID": GATEWAY_CLIENT_ID,
            "OIDC_GATEWAY_CLIENT_SECRET": GATEWAY_CLIENT_SECRET,
        }
        self.process = Process([node_bin(), str(PROVIDER), "0"], cwd=REPO / "tests" / "node", env=env,
                               name="oidc-provider")
        try:
            self.issuer = self.process.wait_for_stdout("oidc-provider listening on ")
            with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
                self.metadata = http.get(f"{self.issuer}/.well-known/openid-configuration").json()
        except Exception:
            self.process.stop()
            raise
        self.token_endpoint = self.metadata["token_endpoint"]
        self.introspection_endpoint = self.metadata["introspection_endpoint"]
        self.revocation_endpoint = self.metadata["revocation_endpoint"]

    def token(self, resource: str | None, *, client_id: str = OPAQUE_CLIENT_ID, scope: str = "mcp") -> str:
        data = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            data["resource"] = resource
        with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
            resp = http.post(self.token_endpoint, data=data, auth=(client_id, CLIENT_SECRET))
        assert resp.status_code == 200, f"token endpoint: HTTP {resp.status_code} {resp.text}"
        return resp.json()["access_token"]

    def introspect(self, token: str, *, client_id: str = GATEWAY_CLIENT_ID,
                   secret: str = GATEWAY_CLIENT_SECRET) -> httpx2.Response:
        with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
            return http.post(self.introspection_endpoint, data={"token": token, "token_type_hint": "access_token"},
                             auth=(client_id, secret))

    def revoke(self, token: str, *, client_id: str = OPAQUE_CLIENT_ID) -> None:
        with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
            resp = http.post(self.revocation_endpoint, data={"token": token, "token_type_hint": "access_token"},
                             auth=(client_id, CLIENT_SECRET))
        assert resp.status_code == 200, f"revocation endpoint: HTTP {resp.status_code} {resp.text}"

    # counting --------------------------------------------------------------
    def mark(self) -> int:
        return len(self.process.stdout_snapshot())

    def calls(self, since: int = 0) -> list[dict[str, str]]:
        """Introspection calls logged since ``since``: {status, client_id, active} per call, in order."""
        out = []
        for line in self.process.stdout_snapshot()[since:]:
            if line.startswith(INTROSPECTION_LINE):
                out.append(dict(f.split("=", 1) for f in line[len(INTROSPECTION_LINE):].split()))
        return out

    def gateway_calls_until_now(self, since: int) -> list[dict[str, str]]:
        """The gateway's introspection calls since ``since``, complete up to now.

        The provider prints its line before sending the answer, but stdout reaches us through a pipe and
        a reader thread. So a sentinel call is made now, by a client used for nothing else (answered
        active=false), and its line waited for: everything the gateway asked before now precedes it on
        the same stdout. Every sentinel is waited for, so the n-th sentinel line is this call's.
        """
        before = sum(1 for c in self.calls() if c["client_id"] == SENTINEL_CLIENT_ID)
        with httpx2.Client(timeout=REQUEST_TIMEOUT) as http:
            resp = http.post(self.introspection_endpoint, data={
                "token": "sentinel-" + secrets.token_hex(4), "client_id": SENTINEL_CLIENT_ID,
                "client_secret": CLIENT_SECRET})
        assert resp.status_code == 200 and resp.json() == {"active": False}, resp.text

        def upto_sentinel() -> list[str] | None:
            lines = self.process.stdout_snapshot()
            seen = 0
            for i, line in enumerate(lines):
                if line.startswith(INTROSPECTION_LINE) and f" client_id={SENTINEL_CLIENT_ID} " in line:
                    seen += 1
                    if seen == before + 1:
                        return lines[:i] + [""]  # non-empty: found
            return None

        lines = wait_until(upto_sentinel, timeout=REQUEST_TIMEOUT, what="the sentinel introspection line")
        calls = []
        for line in lines[since:]:
            if line.startswith(INTROSPECTION_LINE):
                calls.append(dict(f.split("=", 1) for f in line[len(INTROSPECTION_LINE):].split()))
        return [c for c in calls if c["client_id"] == GATEWAY_CLIENT_ID]

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[IntrospectingProvider]:
    try:
        p = IntrospectingProvider()
    except StartError as exc:
        pytest.fail(f"oidc-provider did not start: {exc}", pytrace=False)
    yield p
    p.stop()
    print(p.process.describe())


def introspection_config(provider: IntrospectingProvider, *, cache_max_s: int = 300, leeway_s: int = 5) -> dict:
    """Opaque tokens only: [auth.introspection] at the provider's discovered endpoint, no issuers."""
    return gateway_config([], auth={
        "leeway_s": leeway_s,
        "introspection": {
            "endpoint": provider.introspection_endpoint,
            "issuer": provider.issuer,
            "client_id": GATEWAY_CLIENT_ID,
            "client_secret": {"env": SECRET_ENV},
            "cache_max_s": cache_max_s,
        },
    })


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def intro_gw(provider: IntrospectingProvider, start_gateway: StartGateway) -> GatewayFactory:
    """Factory: a gateway introspecting at the provider with the right (or the given) client secret."""
    def start(*, secret: str = GATEWAY_CLIENT_SECRET, **kw: Any) -> Gateway:
        return start_gateway(introspection_config(provider, **kw), env={SECRET_ENV: secret})
    return start


def assert_not_logged(gw: Gateway, *values: str) -> None:
    out = "\n".join(gw.process.stdout_snapshot() + gw.process.stderr_snapshot())
    for v in values:
        assert v not in out, f"{v[:6]}… appears in the gateway's output"


def echo(gw: Gateway, token: str, text: str) -> httpx2.Response:
    """A fresh MCP session (initialize) and one echo call; the last response (or the refusal)."""
    with Mcp(gw.endpoint("demo"), bearer(token), keepalive=False) as client:
        init = client.initialize()
        if init.status_code != 200:
            return init
        return client.call_tool("echo", {"text": text})


def test_provider_issues_introspectable_opaque_tokens(provider: IntrospectingProvider) -> None:
    """Asserts: the provider's opaque client gets an opaque token whose introspection answer (to the gateway's
    client) has aud = the resource, sub = the client id, iss = the issuer, scope mcp; other clients learn
    nothing (active=false); the discovery document names introspection and revocation endpoints."""
    resource = "http://127.0.0.1:9/mcp/demo"
    token = provider.token(resource)
    assert token.count(".") != 2, "expected an opaque token"
    answer = provider.introspect(token).json()
    assert answer.get("active") is True, answer
    assert answer.get("aud") == resource and answer.get("sub") == OPAQUE_CLIENT_ID, answer
    assert answer.get("iss") == provider.issuer and answer.get("scope") == "mcp", answer
    assert answer.get("exp", 0) > time.time(), answer
    other = provider.introspect(token, client_id=JWT_CLIENT_ID, secret=CLIENT_SECRET)
    assert other.status_code == 200 and other.json() == {"active": False}, other.text
    assert provider.token(resource, client_id=JWT_CLIENT_ID).count(".") == 2, "the JWT client still gets JWTs"


@pytest.mark.anyio
async def test_sdk_client_with_opaque_token(provider: IntrospectingProvider, intro_gw: GatewayFactory) -> None:
    """Asserts: with an opaque provider token for {base}/mcp/demo, the official MCP SDK client initializes,
    lists tools and calls echo through Palisade; the audit log has auth.success with subject = the
    provider's `sub` (the client id) and issuer = the provider; the whole session costs exactly one
    introspection call; the token is not in the gateway's output."""
    gw = intro_gw()
    resource = gw.endpoint("demo")
    token = provider.token(resource)
    assert token.count(".") != 2, "expected an opaque token"
    mark, pmark = gw.mark(), provider.mark()

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
                    result = await session.call_tool("echo", {"text": "via introspection"})
                    assert not result.is_error, result
                    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
                    assert texts == ["via introspection"], result

    success = assert_audit_success(gw, mark)
    assert audit_field(success, "subject") == OPAQUE_CLIENT_ID, success
    assert audit_field(success, "issuer") == provider.issuer, success
    calls = provider.gateway_calls_until_now(pmark)
    assert [c["status"] for c in calls] == ["200"] and calls[0]["active"] == "true", calls
    assert_not_logged(gw, token, GATEWAY_CLIENT_SECRET)


def test_introspection_answer_is_cached(provider: IntrospectingProvider, intro_gw: GatewayFactory) -> None:
    """Asserts: the first request with a token introspects it once; two more calls (new sessions, same token)
    within cache_max_s do not reach the introspection endpoint again."""
    gw = intro_gw(cache_max_s=300)
    token = provider.token(gw.endpoint("demo"))
    pmark = provider.mark()
    assert tool_text(echo(gw, token, "first")) == "first"
    assert len(provider.gateway_calls_until_now(pmark)) == 1

    pmark = provider.mark()
    assert tool_text(echo(gw, token, "second")) == "second"
    assert tool_text(echo(gw, token, "third")) == "third"
    assert provider.gateway_calls_until_now(pmark) == [], "a cached answer was introspected again"


def test_revoked_token_is_refused_after_cache_expiry(provider: IntrospectingProvider,
                                                     intro_gw: GatewayFactory) -> None:
    """Asserts: with cache_max_s = 1, a token revoked at the provider is refused once the cached answer runs
    out: 401 invalid_token, audited inactive_token; before that only the cached success is seen. Before the
    revocation the token works. (Leeway 5 s; leeway 0 is the subject of the next test.)"""
    gw = intro_gw(cache_max_s=1, leeway_s=5)
    token = provider.token(gw.endpoint("demo"))
    assert tool_text(echo(gw, token, "before")) == "before"
    provider.revoke(token)
    assert provider.introspect(token).json() == {"active": False}, "the provider did not revoke the token"

    seen: list[str] = []

    def refused_as_inactive() -> httpx2.Response | None:
        mark = gw.mark()
        with Mcp(gw.endpoint("demo"), bearer(token), keepalive=False) as client:
            resp = client.initialize()
        if resp.status_code == 200:
            seen.append("200 (cached)")
            return None
        failure = gw.wait_for_audit(lambda e: audit_field(e, "event") == "auth.failure", since=mark,
                                    what="auth.failure for the revoked token")
        reason = audit_field(failure, "reason")
        seen.append(f"{resp.status_code} {reason}")
        return resp if reason == "inactive_token" else None

    try:
        resp = wait_until(refused_as_inactive, timeout=15, what="the revoked token to be refused as inactive",
                          interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; responses seen: {seen}") from None
    assert_invalid_token(resp, gw)
    # Only the cached success may precede the refusal.
    assert all(s == "200 (cached)" for s in seen[:-1]), f"unexpected answers before inactive_token: {seen}"
    assert_not_logged(gw, token)


@pytest.mark.parametrize("leeway_s", [5, 0], ids=["leeway5", "leeway0"])
def test_valid_token_is_introspected_again_after_cache_expiry(provider: IntrospectingProvider,
                                                              intro_gw: GatewayFactory, leeway_s: int) -> None:
    """Asserts: with cache_max_s = 1, a token that stays valid at the provider keeps working when its cached
    answer runs out: the gateway introspects it again, and no request in between is refused (the cache
    lifetime is the gateway's choice, not the token's expiry), with leeway 5 s and with leeway 0.

    The first request is made late in a wall-clock second (fraction >= 0.7): the gateway keeps cache
    deadlines in whole seconds, so this makes the interval just after the cached answer's deadline as
    long as it gets, and the 50 ms polling below certainly sends requests into it."""
    gw = intro_gw(cache_max_s=1, leeway_s=leeway_s)
    token = provider.token(gw.endpoint("demo"))
    refused: list[str] = []

    def accepted(resp: httpx2.Response, mark: int) -> bool:
        if resp.status_code == 200:
            return True
        failure = gw.wait_for_audit(lambda e: audit_field(e, "event") == "auth.failure", since=mark,
                                    what="auth.failure audit event")
        refused.append(f"at {time.time():.3f}: {describe(resp)} audit reason={audit_field(failure, 'reason')!r}")
        return False

    wait_until(lambda: time.time() % 1 >= 0.7, timeout=2, what="late in a second", interval=0.01)
    pmark, mark = provider.mark(), gw.mark()
    first_at = time.time()
    with Mcp(gw.endpoint("demo"), bearer(token), keepalive=False) as client:
        assert accepted(client.initialize(), mark), refused

    def introspected_twice() -> bool:
        mark = gw.mark()
        with Mcp(gw.endpoint("demo"), bearer(token), keepalive=False) as client:
            accepted(client.post(client.initialize_message(), session_id=None), mark)
        return len(provider.gateway_calls_until_now(pmark)) >= 2

    wait_until(introspected_twice, timeout=15, what="a second introspection of the still-valid token",
               interval=0.05)
    assert not refused, (f"a valid token (first accepted at {first_at:.3f}) was refused {len(refused)} "
                         f"time(s) when its cached introspection answer ran out: {refused}")


def test_opaque_token_for_another_resource_is_refused(provider: IntrospectingProvider,
                                                      intro_gw: GatewayFactory) -> None:
    """Asserts: an active opaque token whose introspected aud is {base}/mcp/other → 401 invalid_token at
    /mcp/demo, audited wrong_audience."""
    gw = intro_gw()
    token = provider.token(gw.endpoint("other"))
    assert provider.introspect(token).json().get("aud") == gw.endpoint("other")
    mark = gw.mark()
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw)
    assert_audit_failure(gw, "wrong_audience", mark)


def test_unknown_opaque_token_is_inactive(provider: IntrospectingProvider, intro_gw: GatewayFactory) -> None:
    """Asserts: a token the provider never issued → the provider answers active=false → 401 invalid_token,
    audited inactive_token."""
    gw = intro_gw()
    token = secrets.token_urlsafe(32)
    mark, pmark = gw.mark(), provider.mark()
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw)
    assert_audit_failure(gw, "inactive_token", mark)
    calls = provider.gateway_calls_until_now(pmark)
    assert [(c["status"], c["active"]) for c in calls] == [("200", "false")], calls


def test_wrong_gateway_secret_fails_introspection(provider: IntrospectingProvider,
                                                   intro_gw: GatewayFactory) -> None:
    """Asserts: with a wrong introspection client secret the provider refuses the gateway's call (401
    invalid_client); the client's request → 401 invalid_token (not a 5xx, not accepted), audited
    introspection_failed; neither the client's token nor the secret appears in the gateway's output."""
    wrong = "wrong-" + secrets.token_urlsafe(12)
    gw = intro_gw(secret=wrong)
    token = provider.token(gw.endpoint("demo"))
    mark, pmark = gw.mark(), provider.mark()
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw)
    assert_audit_failure(gw, "introspection_failed", mark)
    calls = provider.gateway_calls_until_now(pmark)
    assert [c["status"] for c in calls] == ["401"], calls
    assert_not_logged(gw, token, wrong)


def test_jwt_is_introspected_without_issuers(provider: IntrospectingProvider, intro_gw: GatewayFactory) -> None:
    """Asserts: with no [[auth.issuers]] a JWT access token is not verified locally but sent to introspection;
    oidc-provider refuses to introspect structured tokens (400 unsupported_token_type), so the request →
    401 invalid_token, audited introspection_failed."""
    gw = intro_gw()
    token = provider.token(gw.endpoint("demo"), client_id=JWT_CLIENT_ID)
    assert token.count(".") == 2, "expected a JWT"
    mark, pmark = gw.mark(), provider.mark()
    with Mcp(gw.endpoint("demo"), bearer(token)) as client:
        resp = client.initialize()
    assert_invalid_token(resp, gw)
    assert_audit_failure(gw, "introspection_failed", mark)
    calls = provider.gateway_calls_until_now(pmark)
    assert [c["status"] for c in calls] == ["400"], calls
