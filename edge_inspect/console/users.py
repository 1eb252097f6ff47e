"""Local users of the console: a JSON file of names, roles and argon2id password hashes.

    {"users": {"anna": {"role": "operator", "password_hash": "$argon2id$v=19$..."}}}

`edge-inspect console add-user NAME --role operator --users FILE` writes it (asking for the password);
the file holds no password, only hashes, and is written 0600 all the same (a hash can be attacked offline).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES: tuple[str, ...] = ("operator", "engineer")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")

_hasher = PasswordHasher()
# Verified against when the name is unknown, so a login takes as long whether or not the user exists.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UsersError(ValueError):
    """The users file or a user cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_engineer(self) -> bool:
        return self.role == "engineer"


def load_users(path: Path) -> dict[str, tuple[User, str]]:
    """name → (user, password hash), from the users file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsersError(
            f"{path}: cannot read the users file ({exc.strerror}); create it with "
            "`edge-inspect console add-user NAME --users FILE`"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsersError(f"{path}: not valid JSON ({exc}); fix it or create it again with add-user") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise UsersError(f'{path}: expected {{"users": {{NAME: {{"role": ..., "password_hash": ...}}}}}}')
    loaded = {}
    for name, entry in users.items():
        role = entry.get("role") if isinstance(entry, dict) else None
        digest = entry.get("password_hash") if isinstance(entry, dict) else None
        if not NAME_PATTERN.match(name) or role not in ROLES or not isinstance(digest, str):
            raise UsersError(
                f"{path}: user {name!r} needs a name of letters, digits and ._@-, a role in {ROLES} and a "
                "password_hash; write it with add-user"
            )
        loaded[name] = (User(name, role), digest)
    return loaded


def check_password(users: dict[str, tuple[User, str]], name: str, password: str) -> User | None:
    """The user when `password` is theirs, else None (unknown name or wrong password alike)."""
    user, digest = users.get(name, (None, _DUMMY_HASH))
    try:
        _hasher.verify(digest, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return user


def add_user(path: Path, name: str, role: str, password: str) -> User:
    """Add or replace a user in the users file (created if missing), atomically."""
    if not NAME_PATTERN.match(name):
        raise UsersError(f"user name {name!r}: use 1-64 letters, digits and ._@-")
    if role not in ROLES:
        raise UsersError(f"role {role!r} is not one of {ROLES}")
    if len(password) < 8:
        raise UsersError("the password needs at least 8 characters")
    existing = (
        {n: {"role": u.role, "password_hash": h} for n, (u, h) in load_users(path).items()}
        if path.exists()
        else {}
    )
    existing[name] = {"role": role, "password_hash": _hasher.hash(password)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"users": existing}, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return User(name, role)
