"""TLS on the gateway's own listener (``[server.tls]``), end to end.

Every certificate is generated here, per test, with ``cryptography`` (a throw-away CA, server leaves
with SAN DNS:localhost and IP:127.0.0.1, client leaves for mutual TLS); nothing is committed. The
clients are independent of the gateway's TLS stack (rustls): Python's ``ssl`` / OpenSSL, the
official MCP SDK over httpx2, ``curl`` and ``openssl s_client``.

Covered: the MCP SDK over HTTPS (TLS 1.3, ALPN, HSTS, https resource URLs with auth on), the
protocol floor (1.3 by default, 1.2 on request), mutual TLS (no certificate / another CA / the
configured CA), certificate hot reload under load (file polling, SIGHUP, a half-written pair and a
broken file are refused while the old certificate keeps serving), and the refusal to serve plain HTTP
on a non-loopback address without the explicit flag.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp.types as types
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from palisade_auth import (
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Gateway,
    IdP,
    Mcp,
    StartGateway,
    assert_unauthenticated,
    audit_field,
    demo_upstream,
    gateway_config,
    palisade_bin,
    to_toml,
    wait_for_keys,
    wait_until,
)

HSTS_MAX_AGE = 31_536_000
# Deadline for the gateway to pick up replaced certificate files (polled every second).
RELOAD_DEADLINE = 20.0
CURL = "/usr/bin/curl"
OPENSSL = "/usr/bin/openssl"


# --------------------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Palisade TLS e2e"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key(kind: str) -> Any:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _key_pem(key: Any, fmt: str) -> bytes:
    """``fmt``: "pkcs8", or "traditional" (PKCS#1 for RSA, SEC1 for EC)."""
    private_format = {"pkcs8": serialization.PrivateFormat.PKCS8,
                      "traditional": serialization.PrivateFormat.TraditionalOpenSSL}[fmt]
    return key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())


@dataclass(frozen=True)
class Leaf:
    key: Any
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, fmt: str = "pkcs8") -> bytes:
        return _key_pem(self.key, fmt)

    def write(self, directory: Path, stem: str, key_format: str = "pkcs8") -> tuple[Path, Path]:
        """``stem``.pem (the leaf) and ``stem``.key; returns (cert, key)."""
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem(key_format))
        key_path.chmod(0o600)
        return cert_path, key_path


class TestCA:
    """A throw-away root CA (P-256) that issues server and client certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.now(timezone.utc) - timedelta(minutes=5)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, common_name: str, *, key_kind: str = "ec", client: bool = False,
              dns: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> Leaf:
        key = _new_key(key_kind)
        public = key.public_key()
        start = datetime.now(timezone.utc) - timedelta(minutes=5)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=key_kind == "rsa", data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return Leaf(key, builder.sign(self.key, hashes.SHA256()))


def client_context(ca_file: Path, *, client: tuple[Path, Path] | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """An OpenSSL client context trusting only ``ca_file`` (hostname checked), optionally presenting a
    client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
    return ctx


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- TLS clients


def port_of(gw: Gateway) -> int:
    port = urlsplit(gw.base).port
    assert port, gw.base
    return port


@dataclass(frozen=True)
class Handshake:
    version: str | None
    alpn: str | None
    peer_sha256: str


def handshake(port: int, ctx: ssl.SSLContext, *, server_hostname: str = "localhost",
              timeout: float = REQUEST_TIMEOUT) -> Handshake:
    """A fresh TCP connection and TLS handshake with ``ctx``; what was negotiated and the server's leaf."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der, "the server presented no certificate"
            return Handshake(tls.version(), tls.selected_alpn_protocol(), hashlib.sha256(der).hexdigest())


@dataclass(frozen=True)
class HttpsResult:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str | None
    peer_sha256: str


def https_get(port: int, path: str, ctx: ssl.SSLContext, *, host: str = "127.0.0.1",
              timeout: float = REQUEST_TIMEOUT) -> HttpsResult:
    """GET over a new connection (``Connection: close``), with the certificate the server presented."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.connect()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
        version = conn.sock.version()
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return HttpsResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, version,
                           hashlib.sha256(der or b"").hexdigest())
    finally:
        conn.close()


def refused_reason(port: int, ctx: ssl.SSLContext) -> str:
    """GET /healthz with ``ctx``, expecting the gateway to refuse the connection (a TLS alert, a reset, or
    a connection closed before any response). Returns what the client saw; fails if a response came."""
    try:
        result = https_get(port, "/healthz", ctx, timeout=10)
    except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"expected the connection to be refused, got HTTP {result.status} "
                         f"{result.body[:200]!r} over {result.version}")


# --------------------------------------------------------------------------- gateway configs


def tls_table(cert: Path, key: Path, **extra: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"cert_file": str(cert), "key_file": str(key), "reload_interval_s": 1,
                             "hsts_max_age_s": HSTS_MAX_AGE}
    table.update(extra)
    return table


def anonymous_config(tls: dict[str, Any] | None, **server: Any) -> dict[str, Any]:
    """Authentication off (allowed on loopback), the demo upstream, ``[server.tls]`` = ``tls``."""
    server_table: dict[str, Any] = {"listen": "127.0.0.1:0"}
    server_table.update(server)
    if tls is not None:
        server_table["tls"] = tls
    return {"server": server_table, "auth": {"mode": "none"}, "upstreams": {"demo": demo_upstream()}}


def assert_https_base(gw: Gateway) -> None:
    first = gw.process.stdout_lines[0] if gw.process.stdout_lines else ""
    assert re.fullmatch(r"palisade listening on https://127\.0\.0\.1:\d+", first), (
        f"first stdout line should announce https: {first!r}")
    assert gw.base.startswith("https://127.0.0.1:"), gw.base


@pytest.fixture
def ca() -> TestCA:
    return TestCA("Palisade e2e root")


@pytest.fixture
def ca_file(tmp_path: Path, ca: TestCA) -> Path:
    return ca.write(tmp_path / "ca.pem")


# --------------------------------------------------------------------------- 1. MCP SDK over TLS 1.3


async def _sdk_session(url: str, ctx: ssl.SSLContext, headers: dict[str, str], text: str) -> list[httpx2.Response]:
    """Initialize, list tools and call echo with the official SDK; returns every HTTP response seen."""
    responses: list[httpx2.Response] = []

    async def record(resp: httpx2.Response) -> None:
        responses.append(resp)

    http = httpx2.AsyncClient(verify=ctx, headers=headers, event_hooks={"response": [record]},
                              timeout=httpx2.Timeout(10.0, read=REQUEST_TIMEOUT * 2))
    with anyio.fail_after(60):
        async with http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT,
                                         client_info=types.Implementation(name="palisade-tls-e2e",
                                                                          version="0.1.0")) as session:
                    init = await session.initialize()
                    assert init.server_info.name == "palisade-demo", init
                    tools = await session.list_tools()
                    assert {"echo", "add"} <= {t.name for t in tools.tools}, tools
                    result = await session.call_tool("echo", {"text": text})
                    assert not result.is_error, result
                    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
                    assert texts == [text], result
    return responses


def _assert_hsts_everywhere(responses: list[httpx2.Response]) -> None:
    assert responses, "the SDK made no HTTP requests?"
    for resp in responses:
        assert resp.url.scheme == "https", resp.url
        assert resp.headers.get("strict-transport-security") == f"max-age={HSTS_MAX_AGE}", (
            f"{resp.request.method} {resp.url} -> {resp.status_code} lacks HSTS: {dict(resp.headers)}")


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_mcp_sdk_over_tls13_with_auth(host: str, tmp_path: Path, ca: TestCA, ca_file: Path, idp: IdP,
                                            start_gateway: StartGateway) -> None:
    """Asserts: with oauth on and ``[server.tls]`` (ECDSA leaf, SEC1 key), the gateway announces https; a
    handshake with the test-CA context negotiates TLS 1.3 and picks h2 or http/1.1 from the offered ALPN
    list (only h2 or only http/1.1 offered: that one is chosen); the 401 challenge points at an https
    Protected Resource Metadata URL; the official MCP SDK client (httpx2 with ``verify`` = the CA context)
    initializes, lists tools and calls echo at https://{host}:PORT/mcp/demo with a token whose audience is
    the https resource; every response carries Strict-Transport-Security."""
    cert, key = ca.issue("palisade-server").write(tmp_path, "server", key_format="traditional")
    config = gateway_config([idp.issuer_entry()])
    config["server"]["tls"] = tls_table(cert, key)
    gw = start_gateway(config, wait_for_keys=False)  # the fixture's probe knows nothing of our CA
    assert_https_base(gw)
    port = port_of(gw)
    ctx = client_context(ca_file)

    probe = client_context(ca_file)
    probe.set_alpn_protocols(["h2", "http/1.1"])
    hs = handshake(port, probe, server_hostname=host)
    assert hs.version == "TLSv1.3", hs
    assert hs.alpn in ("h2", "http/1.1"), hs
    for only in ("h2", "http/1.1"):
        one = client_context(ca_file)
        one.set_alpn_protocols([only])
        assert handshake(port, one, server_hostname=host).alpn == only

    url = f"https://{host}:{port}/mcp/demo"
    resource = gw.endpoint("demo")  # the gateway's canonical resource URI (https://127.0.0.1:PORT/mcp/demo)
    token = idp.token(resource, alg="ES256", sub="tls-user")
    wait_for_keys(gw, token, verify=ctx)
    with Mcp(resource, verify=ctx) as client:
        challenge = assert_unauthenticated(client.initialize(), gw)
    assert challenge.params["resource_metadata"].startswith(f"https://127.0.0.1:{port}/"), challenge

    responses = await _sdk_session(url, ctx, {"authorization": f"Bearer {token}"}, f"over tls via {host}")
    _assert_hsts_everywhere(responses)


# --------------------------------------------------------------------------- 2. protocol floor: curl, openssl


def _curl(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CURL, "-sS", "--max-time", "15", "--noproxy", "*", *args], capture_output=True,
                          text=True, timeout=30)


def test_tls13_floor_with_curl_and_openssl(tmp_path: Path, ca: TestCA, ca_file: Path,
                                           start_gateway: StartGateway) -> None:
    """Asserts: by default (min_version unset = 1.3) curl --tls-max 1.2 cannot connect (exit 35, protocol
    version alert; the gateway logs the refused handshake) while plain curl gets 200 from /healthz with
    HSTS; Python's ssl capped at TLS 1.2 is refused too; ``openssl s_client -tls1_3 -CAfile CA`` reports
    TLSv1.3 and verify return code 0 (also checking the IP SAN). With min_version = "1.2" (RSA leaf, PKCS#1
    key; HSTS off) curl --tls-max 1.2 gets 200 over TLS 1.2 and no HSTS header, and a TLS 1.3 client still
    gets TLS 1.3."""
    cert, key = ca.issue("palisade-server").write(tmp_path, "server")
    gw = start_gateway(anonymous_config(tls_table(cert, key)))
    assert_https_base(gw)
    port = port_of(gw)
    url = f"https://127.0.0.1:{port}/healthz"

    ok = _curl(["--cacert", str(ca_file), "-D", "-", "-o", "/dev/null", "-w", "%{http_code}", url])
    assert ok.returncode == 0, f"curl with the CA should connect: rc={ok.returncode} {ok.stderr}"
    assert ok.stdout.endswith("200"), ok.stdout
    assert re.search(rf"(?im)^strict-transport-security: max-age={HSTS_MAX_AGE}\r?$", ok.stdout), ok.stdout

    mark = gw.mark()
    old = _curl(["--cacert", str(ca_file), "--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}", url])
    assert old.returncode == 35, (f"curl --tls-max 1.2 should fail the handshake (exit 35): rc={old.returncode} "
                                  f"stdout={old.stdout!r} stderr={old.stderr!r}")
    assert "protocol version" in old.stderr, old.stderr
    wait_until(lambda: any(e.get("fields", {}).get("message") == "TLS handshake refused"
                           for e in gw.log_events(mark)),
               timeout=10, what="the gateway's 'TLS handshake refused' log line")
    with pytest.raises(ssl.SSLError):
        handshake(port, client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2))

    s_client = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                               "-CAfile", str(ca_file), "-servername", "localhost", "-verify_ip", "127.0.0.1"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    out = s_client.stdout
    assert re.search(r"New, TLSv1\.3, Cipher is|Protocol\s*:\s*TLSv1\.3", out), out[-3000:]
    assert re.search(r"Verify return code: 0 \(ok\)", out), out[-3000:]

    cert12, key12 = ca.issue("palisade-server-12", key_kind="rsa").write(tmp_path, "server12",
                                                                         key_format="traditional")
    assert b"BEGIN RSA PRIVATE KEY" in key12.read_bytes()  # PKCS#1
    gw12 = start_gateway(anonymous_config(tls_table(cert12, key12, min_version="1.2", hsts_max_age_s=0)))
    port12 = port_of(gw12)
    url12 = f"https://127.0.0.1:{port12}/healthz"
    res = _curl(["--cacert", str(ca_file), "--tls-max", "1.2", "-D", "-", "-o", "/dev/null", "-w",
                 "%{http_code}", url12])
    assert res.returncode == 0, f"min_version 1.2: curl --tls-max 1.2 should connect: rc={res.returncode} {res.stderr}"
    assert res.stdout.endswith("200"), res.stdout
    assert "strict-transport-security" not in res.stdout.lower(), f"hsts_max_age_s = 0 should drop HSTS: {res.stdout}"
    r12 = https_get(port12, "/healthz", client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2))
    assert (r12.status, r12.version, r12.body) == (200, "TLSv1.2", b"ok"), r12
    assert handshake(port12, client_context(ca_file)).version == "TLSv1.3"


# --------------------------------------------------------------------------- 3. mutual TLS


@pytest.mark.anyio
async def test_mutual_tls_required(tmp_path: Path, ca: TestCA, ca_file: Path,
                                   start_gateway: StartGateway) -> None:
    """Asserts: with client_auth = "required" and client_ca_file = a client CA, a client presenting no
    certificate is refused, so is one with a client certificate (same subject) issued by another CA, and
    the gateway logs each refused handshake; a client certificate from the configured CA gets 200 from
    /healthz and runs an MCP SDK session (initialize, tools/list, echo)."""
    server_cert, server_key = ca.issue("palisade-server").write(tmp_path, "server")
    client_ca = TestCA("Palisade e2e client CA")
    client_ca_file = client_ca.write(tmp_path / "client-ca.pem")
    good = client_ca.issue("alice", client=True, dns=("alice.client.test",), ips=()).write(tmp_path, "alice")
    rogue_ca = TestCA("Palisade e2e client CA")  # same name, different key
    rogue = rogue_ca.issue("alice", client=True, dns=("alice.client.test",), ips=()).write(tmp_path, "rogue")

    gw = start_gateway(anonymous_config(tls_table(server_cert, server_key, client_ca_file=str(client_ca_file),
                                                  client_auth="required")))
    assert_https_base(gw)
    port = port_of(gw)

    def refused_in_log(since: int) -> None:
        wait_until(lambda: any(e.get("fields", {}).get("message") == "TLS handshake refused"
                               for e in gw.log_events(since)),
                   timeout=10, what="the gateway's 'TLS handshake refused' log line")

    mark = gw.mark()
    seen = refused_reason(port, client_context(ca_file))
    refused_in_log(mark)
    mark = gw.mark()
    seen_rogue = refused_reason(port, client_context(ca_file, client=rogue))
    refused_in_log(mark)

    ctx = client_context(ca_file, client=good)
    res = https_get(port, "/healthz", ctx)
    assert (res.status, res.body) == (200, b"ok"), (res, seen, seen_rogue)
    assert res.headers.get("strict-transport-security") == f"max-age={HSTS_MAX_AGE}", res.headers
    responses = await _sdk_session(f"https://127.0.0.1:{port}/mcp/demo", ctx, {}, "mutual tls")
    _assert_hsts_everywhere(responses)
    # The session's client still needs its certificate: a refusal after it succeeded is not a fluke.
    refused_reason(port, client_context(ca_file))


# --------------------------------------------------------------------------- 4. hot reload


class Load:
    """Threads doing HTTPS GET /healthz on a fresh connection each time, until stopped."""

    def __init__(self, port: int, ctx: ssl.SSLContext, threads: int = 4) -> None:
        self.port = port
        self.ctx = ctx
        self.ok = 0
        self.failures: list[str] = []
        self.fingerprints: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"tls-load-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                res = https_get(self.port, "/healthz", self.ctx, timeout=15)
            except Exception as exc:  # noqa: BLE001 (every failure counts)
                with self._lock:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if res.status == 200 and res.body == b"ok":
                    self.ok += 1
                    self.fingerprints[res.peer_sha256] += 1
                else:
                    self.failures.append(f"HTTP {res.status} {res.body[:200]!r}")

    def seen(self, fingerprint: str) -> bool:
        with self._lock:
            return self.fingerprints[fingerprint] > 0

    def count(self) -> int:
        with self._lock:
            return self.ok

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def wait_for_served(port: int, ctx: ssl.SSLContext, want: Leaf, what: str) -> None:
    """Poll fresh handshakes until the server presents ``want``."""
    wait_until(lambda: handshake(port, ctx).peer_sha256 == want.sha256, timeout=RELOAD_DEADLINE,
               what=f"new handshakes to present {what}", interval=0.1)


def test_certificate_hot_reload_under_load(tmp_path: Path, ca: TestCA, ca_file: Path,
                                           start_gateway: StartGateway) -> None:
    """Asserts: while 4 threads run fresh-connection HTTPS GETs of /healthz the whole time, the gateway moves
    from certificate A (ECDSA, PKCS#8) to B (RSA, PKCS#1; key file replaced before the certificate, so a
    mismatched pair exists for a moment) by file polling, then to C (Ed25519) after SIGHUP, each audited as
    tls.certificate_reloaded with the new fingerprint, and the load sees each of them; zero requests
    fail. A garbage certificate file plus SIGHUP is refused (tls.certificate_rejected) and new handshakes
    still present C, with requests still succeeding."""
    a = ca.issue("cert-a", key_kind="ec")
    b = ca.issue("cert-b", key_kind="rsa")
    c = ca.issue("cert-c", key_kind="ed25519")
    cert, key = a.write(tmp_path, "server", key_format="pkcs8")
    gw = start_gateway(anonymous_config(tls_table(cert, key, reload_interval_s=1)))
    port = port_of(gw)
    ctx = client_context(ca_file)
    assert handshake(port, ctx).peer_sha256 == a.sha256

    def reloaded_to(leaf: Leaf, since: int) -> None:
        gw.wait_for_audit(lambda e: audit_field(e, "event") == "tls.certificate_reloaded"
                          and str(audit_field(e, "sha256")).lower().replace(":", "") == leaf.sha256,
                          since=since, timeout=RELOAD_DEADLINE,
                          what=f"tls.certificate_reloaded with sha256 {leaf.sha256}")

    load = Load(port, ctx)
    try:
        wait_until(lambda: load.count() >= 10, timeout=30, what="the load to get going")
        assert load.seen(a.sha256)

        # B by polling: the key first, then the certificate.
        mark = gw.mark()
        replace_atomically(key, b.key_pem("traditional"))
        replace_atomically(cert, b.cert_pem)
        wait_for_served(port, ctx, b, "certificate B (file polling)")
        reloaded_to(b, mark)
        wait_until(lambda: load.seen(b.sha256), timeout=RELOAD_DEADLINE, what="the load to see certificate B")

        # C, then SIGHUP.
        mark = gw.mark()
        replace_atomically(key, c.key_pem())
        replace_atomically(cert, c.cert_pem)
        gw.process.proc.send_signal(signal.SIGHUP)
        wait_for_served(port, ctx, c, "certificate C (SIGHUP)")
        reloaded_to(c, mark)
        wait_until(lambda: any(e.get("fields", {}).get("message") == "SIGHUP: reloading the TLS certificate"
                               for e in gw.log_events(mark)),
                   timeout=10, what="the gateway to log the SIGHUP reload")
        wait_until(lambda: load.seen(c.sha256), timeout=RELOAD_DEADLINE, what="the load to see certificate C")

        # Garbage: refused, C keeps serving.
        mark = gw.mark()
        replace_atomically(cert, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        gw.process.proc.send_signal(signal.SIGHUP)
        rejected = gw.wait_for_audit(lambda e: audit_field(e, "event") == "tls.certificate_rejected",
                                     since=mark, timeout=RELOAD_DEADLINE,
                                     what="tls.certificate_rejected after a garbage certificate file")
        assert rejected.get("level") == "ERROR", rejected
        for _ in range(5):
            assert handshake(port, ctx).peer_sha256 == c.sha256, "the old certificate should keep serving"
        before = load.count()
        wait_until(lambda: load.count() >= before + 10, timeout=30, what="requests to keep succeeding")
        assert gw.process.proc.poll() is None, "the gateway exited"
    finally:
        load.stop()
    assert not load.failures, f"{len(load.failures)} failed of {load.ok + len(load.failures)}: {load.failures[:10]}"
    assert load.ok > 0
    assert all(load.fingerprints[x.sha256] > 0 for x in (a, b, c)), load.fingerprints
    assert set(load.fingerprints) == {a.sha256, b.sha256, c.sha256}, load.fingerprints


def test_sighup_alone_reloads(tmp_path: Path, ca: TestCA, ca_file: Path, start_gateway: StartGateway) -> None:
    """Asserts: with reload_interval_s = 3600 (polling effectively off), replaced files are not served
    before SIGHUP, and are after it; a key that does not belong to the certificate (+ SIGHUP) is refused
    (tls.certificate_rejected) and the previous certificate keeps serving."""
    a = ca.issue("cert-a")
    b = ca.issue("cert-b")
    stranger = ca.issue("cert-stranger")
    cert, key = a.write(tmp_path, "server")
    gw = start_gateway(anonymous_config(tls_table(cert, key, reload_interval_s=3600)))
    port = port_of(gw)
    ctx = client_context(ca_file)
    assert handshake(port, ctx).peer_sha256 == a.sha256

    replace_atomically(key, b.key_pem())
    replace_atomically(cert, b.cert_pem)
    assert handshake(port, ctx).peer_sha256 == a.sha256, "picked up without SIGHUP despite a 1 h interval"
    gw.process.proc.send_signal(signal.SIGHUP)
    wait_for_served(port, ctx, b, "certificate B after SIGHUP")

    mark = gw.mark()
    replace_atomically(key, stranger.key_pem())  # certificate B with another key
    gw.process.proc.send_signal(signal.SIGHUP)
    gw.wait_for_audit(lambda e: audit_field(e, "event") == "tls.certificate_rejected", since=mark,
                      timeout=RELOAD_DEADLINE, what="tls.certificate_rejected for a mismatched key")
    for _ in range(3):
        res = https_get(port, "/healthz", ctx)
        assert (res.status, res.peer_sha256) == (200, b.sha256), res


# --------------------------------------------------------------------------- 5. plain HTTP off loopback


def _write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / f"palisade-{time.monotonic_ns()}.toml"
    path.write_text(to_toml(config))
    return path


def test_plain_http_on_non_loopback_needs_the_flag(tmp_path: Path, start_gateway: StartGateway) -> None:
    """Asserts: listen = "0.0.0.0:0" without [server.tls] → the gateway exits non-zero before announcing
    a listener, saying "plain HTTP on non-loopback"; with allow_plain_http_non_loopback = true it starts,
    announces http://, serves /healthz over plain HTTP and warns loudly. (Anonymous access off loopback is
    allowed explicitly in both, so the TLS rule is the only difference.)"""
    base = anonymous_config(None, listen="0.0.0.0:0")
    base["auth"]["allow_anonymous_non_loopback"] = True
    path = _write_config(tmp_path, base)
    proc = subprocess.Popen([str(palisade_bin()), "--log-format", "json", "serve", "--config", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the gateway kept running with plain HTTP on 0.0.0.0: stdout={out!r} stderr={err[-2000:]!r}")
    assert proc.returncode != 0, (proc.returncode, out, err)
    assert "plain HTTP on non-loopback" in err, err[-2000:]
    assert "palisade listening on" not in out, out

    allowed = anonymous_config(None, listen="0.0.0.0:0", allow_plain_http_non_loopback=True)
    allowed["auth"]["allow_anonymous_non_loopback"] = True
    gw = start_gateway(allowed)
    try:
        assert re.fullmatch(r"http://0\.0\.0\.0:\d+", gw.base), gw.base
        port = port_of(gw)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"ok")
            assert resp.getheader("strict-transport-security") is None
        finally:
            conn.close()
        wait_until(lambda: any("PLAIN HTTP ON A NON-LOOPBACK ADDRESS" in str(e.get("fields", {}).get("message", ""))
                               for e in gw.log_events()),
                   timeout=10, what="the plain-HTTP warning")
    finally:
        gw.stop()
    assert gw.process.proc.poll() is not None
