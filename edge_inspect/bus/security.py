"""Authenticated, encrypted bus links: ZeroMQ CURVE with an allow-list of camera keys (ZAP).

The inspector holds a key pair; every camera (and every results subscriber) holds its own. The inspector
accepts a connection only from a client whose public key is in its allow-list directory, so a device on
the plant network that can reach the port can neither inject frames nor read results. Keys are ZeroMQ's
certificate files: `NAME.key` (public, to share) and `NAME.key_secret` (public + secret, to keep),
written by `edge-inspect keys` (`write_key_pair`).

No torch here: the camera gateways use it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge_inspect.logs import log_event

logger = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class BusKeyError(ValueError):
    """A key file that is missing or unusable; the message names the file and what to do."""


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A new CURVE key pair as `directory/NAME.key` (public) and `NAME.key_secret` (owner-only)."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = (directory / f"{name}{suffix}" for suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX))
    for path in (public, secret):
        if path.exists():
            raise BusKeyError(f"{path} exists; refusing to overwrite a key (delete it first to rotate)")
    public_key, secret_key = zmq.curve_keypair()
    public.write_text(_certificate(public_key, None))
    # Created owner-only from the start, never world-readable for a moment.
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(_certificate(public_key, secret_key))
    return public, secret


def _certificate(public_key: bytes, secret_key: bytes | None) -> str:
    lines = ["#   ZeroMQ CURVE certificate written by edge-inspect keys", "metadata", "curve"]
    lines.append(f'    public-key = "{public_key.decode()}"')
    if secret_key is not None:
        lines.append(f'    secret-key = "{secret_key.decode()}"')
    return "\n".join(lines) + "\n"


def load_public(path: Path) -> bytes:
    return _load(path, need_secret=False)[0]


def load_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _load(path, need_secret=True)
    assert secret is not None
    return public, secret


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise BusKeyError(
            f"key file {path} does not exist; create one with `edge-inspect keys NAME --dir DIR`"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise BusKeyError(
            f"key file {path} is not a ZeroMQ certificate ({exc}); use `edge-inspect keys`"
        ) from exc
    if need_secret and not secret:
        raise BusKeyError(f"{path} holds only a public key; give the `{SECRET_SUFFIX}` file here")
    return public, secret


@dataclass(frozen=True)
class ClientKeys:
    """A camera's (or subscriber's) side: its own key pair and the inspector's public key."""

    secret_file: Path
    server_public_file: Path

    def apply(self, socket: zmq.Socket) -> None:
        public, secret = load_pair(self.secret_file)
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_serverkey = load_public(self.server_public_file)


@dataclass
class RefusalCounter:
    """Connections refused by the allow-list, by reason; read by metrics and the summary."""

    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self) -> None:
        with self._lock:
            self.refused += 1


class ServerAuth:
    """The inspector's side: its key pair for every bound socket and a ZAP handler that accepts only the
    public keys found in `allowed_dir` (read at start; `reload()` after adding a camera)."""

    def __init__(self, secret_file: Path, allowed_dir: Path, context: zmq.Context) -> None:
        self._public, self._secret = load_pair(secret_file)
        self.allowed_dir = allowed_dir
        self.refusals = RefusalCounter()
        self._allowed: frozenset[bytes] = frozenset()
        self.reload()
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback(domain="*", credentials_provider=self)

    def reload(self) -> None:
        if not self.allowed_dir.is_dir():
            raise BusKeyError(
                f"allowed camera keys directory {self.allowed_dir} does not exist; put each camera's "
                f"public `{PUBLIC_SUFFIX}` file there"
            )
        keys = frozenset(load_public(path) for path in sorted(self.allowed_dir.glob(f"*{PUBLIC_SUFFIX}")))
        self._allowed = keys
        log_event(logger, logging.INFO, "bus_keys_loaded", allowed=len(keys), directory=str(self.allowed_dir))

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP: is this z85-encoded client key allowed? Called on the authenticator's thread."""
        allowed = client_key in self._allowed
        if not allowed:
            self.refusals.add()
            log_event(
                logger, logging.WARNING, "bus_peer_refused", client_key=client_key.decode(errors="replace")
            )
        return allowed

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_server = True
        socket.curve_publickey = self._public
        socket.curve_secretkey = self._secret

    def stop(self) -> None:
        self._authenticator.stop()


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// and inproc:// endpoints and TCP endpoints bound to a loopback address."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from the network
