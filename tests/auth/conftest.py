"""Fixtures for the authentication end-to-end suite (see README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palisade_auth import Gateway, HeaderEchoServer, IdP, KeySet, StartError, StartGateway, gateway_config


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
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Factory: start_gateway(config_dict) -> a running Gateway; all are stopped at teardown.

    The tail of each gateway's stderr is printed at teardown, so a failing test
    shows what the gateway logged.
    """
    started: list[Gateway] = []

    def start(config: dict[str, Any], **kw: Any) -> Gateway:
        try:
            gw = Gateway(config, tmp_path, **kw)
        except StartError as exc:
            pytest.fail(f"gateway did not start: {exc}", pytrace=False)
        started.append(gw)
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
