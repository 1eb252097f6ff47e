"""Who is at the console: a session cookie after a login with a local user, or a reverse proxy's header.

Sessions live in memory (a console restart logs everyone out, which a panel PC survives). The cookie is
HttpOnly and SameSite=Strict, and every state-changing request is JSON, which a foreign page cannot send
to us without a CORS preflight we never grant: no cross-site request forgery.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_inspect.console.users import NAME_PATTERN, User, check_password, load_users

COOKIE = "edgeinspect_console"
SESSION_S = 12 * 3600  # a long shift


@dataclass(frozen=True)
class Session:
    user: User
    expires: float


class Authenticator:
    """Logs users in and tells who a request comes from. With `proxy_user_header`, the proxy in front
    of the console has authenticated the user: the header's name is taken as is, with the role the
    users file gives it (operator when it is not listed)."""

    def __init__(self, users_file: Path | None, proxy_user_header: str | None) -> None:
        self._users_file = users_file
        self._users = load_users(users_file) if users_file is not None else {}
        self.proxy_user_header = proxy_user_header
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def can_log_in(self) -> bool:
        return bool(self._users)

    def log_in(self, name: str, password: str) -> str | None:
        """A new session token, or None when the name or password is wrong."""
        user = check_password(self._users, name, password)
        if user is None:
            return None
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {t: s for t, s in self._sessions.items() if s.expires > now}
            self._sessions[token] = Session(user, now + SESSION_S)
        return token

    def log_out(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def identify(self, headers: dict[str, str] | object, cookie: str | None) -> User | None:
        """The user of a request: the proxy's header when configured and present, else the session."""
        if self.proxy_user_header:
            name = headers.get(self.proxy_user_header.lower())  # type: ignore[attr-defined]
            if name and NAME_PATTERN.match(name):
                listed = self._users.get(name)
                return listed[0] if listed is not None else User(name, "operator")
        if not cookie:
            return None
        with self._lock:
            session = self._sessions.get(cookie)
        if session is None or session.expires <= time.monotonic():
            return None
        return session.user
