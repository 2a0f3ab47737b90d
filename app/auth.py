"""Who may use the app: a users file with salted PBKDF2 password hashes and two roles.

Roles: `user` asks and gives feedback; `admin` also sees feedback counts, exports and model versions. The file is
`RAGQA_HOME/users.json` (or the path in `RAGQA_USERS_FILE`), written by `ragqa users add NAME --role ROLE`:

    {"alice": {"role": "admin", "password": "pbkdf2_sha256$240000$<salt hex>$<hash hex>"}}

Only hashes are stored. A check costs one PBKDF2 whether or not the name exists (an unknown name is checked against
a dummy hash), so timing does not reveal which names exist. The file is re-read when it changes (inode, size or
mtime), so `ragqa users add/remove` takes effect in a running server at once; `credential_version` changes with a
user's password or role, which is what ends their sessions (app/access.py). Stdlib only, nothing heavy imported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.errors import AppError

ROLES = ("user", "admin")
ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 240_000
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
log = logging.getLogger(__name__)
# Unknown names are checked against this: the current cost with a random salt and digest, so the check is one
# PBKDF2 like a real user's. Made without hashing anything: a lazily hashed dummy made the first unknown name cost two.
_DUMMY_HASH = f"{ALGORITHM}${ITERATIONS}${secrets.token_hex(16)}${secrets.token_hex(32)}"


class AuthError(AppError, ValueError):
    """The users file or a user entry is invalid; the message says how to fix it."""


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    if len(password) < 8:
        raise AuthError("a password needs at least 8 characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algorithm, iterations, salt, expected = encoded.split("$")
        if algorithm != ALGORITHM:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


def users_file(home: Path) -> Path:
    return Path(os.environ.get("RAGQA_USERS_FILE") or home / "users.json")


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Users:
    """The users file; `check` is what the login calls. Re-read whenever the file changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = self._file_stamp()
        self._entries: dict[str, dict[str, str]] = self._load()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        # `_save` replaces the file (a new inode), an editor may rewrite it in place (size or mtime change).
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> None:
        """Pick up changes made by another process (`ragqa users ...` while the server runs)."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._entries = self._load()
        except AuthError as e:
            # Fail closed: a damaged file must not keep removed users (or old passwords) working.
            log.error("%s; nobody can log in until it is fixed", e)
            self._entries = {}

    def _load(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise AuthError(
                f"{self.path} is not valid JSON ({e}); fix it or recreate it with `ragqa users add`"
            ) from e
        if not isinstance(data, dict):
            raise AuthError(f"{self.path} must map user names to {{role, password}}")
        for name, entry in data.items():
            if not isinstance(entry, dict) or entry.get("role") not in ROLES or "password" not in entry:
                raise AuthError(
                    f"{self.path}: user {name!r} needs a role ({' or '.join(ROLES)}) and a password hash"
                )
        return data

    def __bool__(self) -> bool:
        self._refresh()
        return bool(self._entries)

    def names(self) -> list[str]:
        self._refresh()
        return sorted(self._entries)

    def check(self, name: str, password: str) -> bool:
        self._refresh()
        entry = self._entries.get(name)
        if entry is None:
            # Exactly one PBKDF2, as for a real user, so timing does not reveal which names exist.
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, entry["password"])

    def get(self, name: str | None) -> User | None:
        self._refresh()
        entry = self._entries.get(name or "")
        return None if entry is None else User(str(name), entry["role"])

    def credential_version(self, name: str | None) -> str | None:
        """Changes when the user's password or role changes; None for a user that does not exist (any more)."""
        self._refresh()
        entry = self._entries.get(name or "")
        if entry is None:
            return None
        return hashlib.sha256(f"{entry['role']}\0{entry['password']}".encode()).hexdigest()

    def add(self, name: str, password: str, role: str = "user") -> User:
        if not _NAME.match(name):
            raise AuthError("a user name is 1-64 letters, digits or _ . @ -")
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}")
        self._refresh()
        self._entries[name] = {"role": role, "password": hash_password(password)}
        self._save()
        return User(name, role)

    def remove(self, name: str) -> None:
        self._refresh()
        if self._entries.pop(name, None) is None:
            raise AuthError(f"no user {name!r}")
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".users.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self._entries, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # password hashes are still secrets
        os.replace(tmp, self.path)
        self._stamp = self._file_stamp()


def check_bind(host: str, users: Users, insecure: bool) -> str | None:
    """Refuse to expose the app beyond this machine without logins; returns a warning to print, if any."""
    if host in LOCAL_HOSTS:
        return None
    if users:
        return None
    if insecure:
        return (
            f"WARNING: serving on {host} WITHOUT authentication (--insecure). OPEN to anyone who can reach this "
            "address: asking questions, reading every indexed document through answers and the Sources panel, "
            "and writing feedback (ratings, rankings, corrections) that the next retrain learns from. "
            "NOT open: admin actions (feedback counts, model versions, rollback, uploads) are off in the web UI "
            "without logins; use the ragqa command line for them. Only Host names localhost, this host and "
            "allowed_hosts (config.yaml) are served. Add users with `ragqa users add NAME --role admin`."
        )
    raise AuthError(
        f"refusing to listen on {host} without authentication: add users with `ragqa users add NAME --role admin` "
        "(stored hashed in RAGQA_HOME/users.json), or pass --insecure to accept the risk"
    )
