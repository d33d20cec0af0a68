"""Fixtures for the authentication end-to-end suite (see README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palisade_auth import Gateway, HeaderEchoServer, IdP, KeySet, StartError, StartGateway, gateway_config
from palisade_auth import wait_for_keys as keys_loaded


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def keys() -> KeySet:
    """The trusted issuer's RSA 2048 / P-256 / Ed25519 keys, and an attacker's (generated once per run)."""
    return KeySet.generate()


@pytest.fixture
def idp(keys: KeySet) -> Iterator[IdP]:
    """A fresh in-process issuer: {base}/issuer, JWKS at {base}/jwks.json (hit counts start at zero)."""
    server = IdP(keys)
    yield server
    server.close()


@pytest.fixture
def start_gateway(tmp_path: Path, idp: IdP) -> Iterator[StartGateway]:
    """Factory: start_gateway(config_dict, wait_for_keys=True) -> a running Gateway; all are stopped at
    teardown.

    When the config trusts the test issuer (``idp``, with its jwks_uri), the factory also waits until the
    gateway has loaded that issuer's keys (``wait_for_keys``: polled with a valid token), so tests do not
    race the gateway's background key fetch. The tail of each gateway's output is printed at teardown,
    so a failing test shows what the gateway logged.
    """
    started: list[Gateway] = []

    def start(config: dict[str, Any], *, wait_for_keys: bool = True, **kw: Any) -> Gateway:
        try:
            gw = Gateway(config, tmp_path, **kw)
        except StartError as exc:
            pytest.fail(f"gateway did not start: {exc}", pytrace=False)
        started.append(gw)
        ours = [i for i in config["auth"].get("issuers", [])
                if i.get("issuer") == idp.issuer and i.get("jwks_uri")]
        if wait_for_keys and ours:
            alg = ours[0].get("algorithms", ["ES256"])[0]
            keys_loaded(gw, lambda: idp.token(gw.endpoint("demo"), alg=alg, sub="key-probe"))
        return gw

    yield start
    for gw in started:
        gw.stop()
        print(f"\n===== gateway {gw.base} =====\n{gw.describe()}")


@pytest.fixture
def gw(idp: IdP, start_gateway: StartGateway) -> Gateway:
    """The default gateway: the test issuer (all four algorithms, jwks_uri), required scope `mcp`, /mcp/demo."""
    return start_gateway(gateway_config([idp.issuer_entry()]))


@pytest.fixture
def echo_http() -> Iterator[HeaderEchoServer]:
    """palisade-testserver over Streamable HTTP (tool `request_headers`)."""
    try:
        server = HeaderEchoServer()
    except StartError as exc:
        pytest.fail(f"palisade-testserver did not start: {exc}", pytrace=False)
    yield server
    server.stop()
