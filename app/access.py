"""Who may reach the running app, checked on every HTTP request before Gradio sees it.

- Trusted hosts: only requests whose Host header names localhost, the configured host or an `allowed_hosts` entry
  are served (400 otherwise). This is what stops DNS rebinding: a page on `rebind.attacker.example` that resolves
  to 127.0.0.1 reaches the port, but its requests carry the attacker's name in Host.
- Same origin: a state-changing request (POST, PUT, PATCH, DELETE) that carries an Origin must come from an allowed
  host (for a localhost name, on this server's port), so another site or another local app cannot post to it.
- Logins: the password check runs in a one-thread pool, off Gradio's event loop (a PBKDF2 takes ~100 ms; on the
  loop it stalled every other request), and failed logins back off per name and per client address.
- Sessions: a login token is bound to the user's credential version (password and role) and expires after
  `session_ttl_hours`; removing a user, changing a password or a role ends their sessions at the next request.
- Chat state: Gradio keeps each browser session's state under a session hash sent by the client; the first
  logged-in user to use a hash owns it, and another user presenting it is refused.
- Uploads (`/gradio_api/upload`): admins only, and never without logins (admin actions are then command-line only);
  size-capped by Gradio's `max_file_size`, and the upload cache is emptied hourly.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from app.auth import LOCAL_HOSTS, Users

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Gradio routes whose JSON body names the session whose state they read or write.
_SESSION_BODY_ROUTES = (
    "/gradio_api/queue/join",
    "/gradio_api/run/",
    "/gradio_api/api/",
    "/gradio_api/cancel",
)
_SESSION_PATH_ROUTES = ("/gradio_api/heartbeat/", "/gradio_api/stream/")
_UPLOAD_ROUTE = "/gradio_api/upload"
_MAX_JSON_BODY = 4 * 1024 * 1024  # questions are capped at a few KB; nothing legitimate comes near this
_MAX_SESSIONS = 10_000  # Gradio's own default state capacity
UPLOAD_CACHE_CLEANUP = (3600, 3600)  # every hour, delete uploads older than an hour

# The client address of the request being handled, for the login backoff (the auth callable only gets name and
# password). Set by AccessGuard; contextvars follow the request into the login endpoint's task.
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ragqa_client_address", default=None
)


# ---- hosts and origins -------------------------------------------------------------------------------
def host_name(netloc: str) -> str:
    """`Example.COM.:7860` -> `example.com`, `[::1]:7860` -> `::1`."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    if netloc.count(":") == 1:
        netloc = netloc.rsplit(":", 1)[0]
    return netloc.rstrip(".")


def _port_of(netloc: str, default: int | None) -> int | None:
    tail = netloc.rsplit("]", 1)[-1] if netloc.startswith("[") else netloc
    if tail.count(":") == 1:
        try:
            return int(tail.rsplit(":", 1)[1])
        except ValueError:
            return None
    return default


def allowed_hosts(configured_host: str, extra: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """Localhost names, the host the server binds to (unless a wildcard) and the explicit list from config."""
    names = set(LOCAL_HOSTS)
    if configured_host not in WILDCARD_HOSTS:
        names.add(host_name(configured_host))
    names.update(host_name(h) for h in extra if h.strip())
    return frozenset(names)


# ---- login backoff -----------------------------------------------------------------------------------
@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Exponential, bounded backoff after failed logins, per user name and per client address.

    The first `free_*` failures cost nothing (typos); each further failure doubles the wait, from `base_s` up to
    `max_s`. A key is forgotten `forget_s` after its last failure; a successful login clears the name (not the
    address: one valid account must not reset an address that is guessing other names).
    """

    free_per_name: int = 5
    free_per_address: int = 10
    base_s: float = 1.0
    max_s: float = 60.0
    forget_s: float = 900.0
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _keys: OrderedDict[str, _Failures] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, name: str, address: str | None) -> float:
        """Seconds until `name` from `address` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [self._wait(key, now) for key in self._keys_of(name, address)]
        return max(waits)

    def failed(self, name: str, address: str | None) -> None:
        now = self.clock()
        with self._lock:
            for key, free in zip(
                self._keys_of(name, address), (self.free_per_name, self.free_per_address), strict=False
            ):
                entry = self._keys.pop(key, None) or _Failures()
                if now - entry.last > self.forget_s:
                    entry = _Failures()
                entry.count += 1
                entry.last = now
                if entry.count > free:
                    entry.blocked_until = now + min(self.max_s, self.base_s * 2 ** (entry.count - free - 1))
                self._keys[key] = entry
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._keys.pop(f"name:{name}", None)

    def _wait(self, key: str, now: float) -> float:
        entry = self._keys.get(key)
        return 0.0 if entry is None else max(0.0, entry.blocked_until - now)

    @staticmethod
    def _keys_of(name: str, address: str | None) -> list[str]:
        return [f"name:{name}", f"addr:{address or '?'}"]


class LoginGuard:
    """The `auth` callable given to Gradio: backoff first, then one PBKDF2 in a one-thread pool off the event loop.

    One thread: password checks queue behind each other instead of taking both cores from the answers; at most
    `max_pending` wait, beyond that a login is told to retry (an attacker cannot queue up minutes of hashing).
    """

    def __init__(self, users: Users, throttle: LoginThrottle | None = None, max_pending: int = 4) -> None:
        self.users = users
        self.throttle = throttle or LoginThrottle()
        self.max_pending = max_pending
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragqa-login")

    async def check(self, name: str, password: str) -> bool:
        from fastapi import HTTPException

        address = CLIENT_ADDRESS.get()
        wait = self.throttle.wait_s(name, address)
        if wait > 0:
            seconds = math.ceil(wait)
            raise HTTPException(
                status_code=429,
                detail=f"too many failed logins: try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        if self._pending >= self.max_pending:
            raise HTTPException(status_code=429, detail="too many logins at once: try again in 1 s")
        self._pending += 1  # only touched on the event loop: no lock needed
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.users.check, name, password
            )
        finally:
            self._pending -= 1
        if ok:
            self.throttle.succeeded(name)
        else:
            self.throttle.failed(name, address)
        return ok

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---- sessions ----------------------------------------------------------------------------------------
class SessionTokens(MutableMapping[str, str]):
    """Gradio's login-token table (`app.tokens`: token -> user name), with revocation and expiry.

    Gradio stores `tokens[token] = name` at login and reads `tokens.get(token)` on every request; here a read
    also checks that the user still exists with the same credential version and that the token is younger than
    `ttl_s`. A token that fails is deleted, so the request is treated as not logged in (401).
    """

    def __init__(self, users: Users, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.users = users
        self.ttl_s = ttl_s
        self.clock = clock
        self._tokens: dict[str, tuple[str, str | None, float]] = {}
        self._lock = threading.Lock()

    def __setitem__(self, token: str, name: str) -> None:
        with self._lock:
            self._prune()  # each login drops dead tokens: the table stays the size of the live sessions
            self._tokens[token] = (name, self.users.credential_version(name), self.clock())

    def __getitem__(self, token: str) -> str:
        with self._lock:
            if not self._valid(token):
                self._tokens.pop(token, None)
                raise KeyError(token)
            return self._tokens[token][0]

    def _valid(self, token: str) -> bool:
        entry = self._tokens.get(token)
        if entry is None:
            return False
        name, version, issued = entry
        current = self.users.credential_version(name)
        return current is not None and current == version and self.clock() - issued <= self.ttl_s

    def _prune(self) -> None:
        for token in [t for t in self._tokens if not self._valid(t)]:
            del self._tokens[token]

    def __delitem__(self, token: str) -> None:
        with self._lock:
            del self._tokens[token]

    def __iter__(self) -> Iterator[str]:
        # Live tokens only: Gradio's logout reads `tokens[t]` for every key it iterates.
        with self._lock:
            self._prune()
            return iter(list(self._tokens))

    def __len__(self) -> int:
        return len(self._tokens)


# ---- the middleware ----------------------------------------------------------------------------------
@dataclass
class AccessPolicy:
    """What AccessGuard enforces; built once per server from the config and the users file."""

    hosts: frozenset[str]
    port: int
    users: Users | None  # None: no logins (every visitor is anonymous; admin actions are command-line only)
    session_ttl_s: float
    max_upload_bytes: int
    owners: OrderedDict[str, str] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def origin_allowed(self, origin: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # includes "null" (sandboxed frames, file:// pages)
        name = host_name(parts.netloc)
        if name not in self.hosts:
            return False
        if name in LOCAL_HOSTS:  # another app on this machine is another origin: the port must be ours
            return _port_of(parts.netloc, 443 if parts.scheme == "https" else 80) == self.port
        return True

    def claim_session(self, session_hash: str, user: str | None) -> bool:
        """Bind a session hash to the first logged-in user who uses it; False if it belongs to someone else."""
        with self.lock:
            owner = self.owners.get(session_hash)
            if owner is None:
                if user is not None:
                    self.owners[session_hash] = user
                    while len(self.owners) > _MAX_SESSIONS:
                        self.owners.popitem(last=False)
                return True
            self.owners.move_to_end(session_hash)
            return owner == user


class AccessGuard:
    """Pure ASGI middleware (Gradio's app gets it through `app_kwargs`); see the module doc for the rules."""

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        if not host or host_name(host) not in self.policy.hosts:
            await _refuse(
                scope,
                receive,
                send,
                400,
                f"host {host_name(host) or '(none)'!r} is not served here; add it to allowed_hosts in config.yaml",
            )
            return
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        if method in STATE_CHANGING and origin is not None and not self.policy.origin_allowed(origin):
            await _refuse(scope, receive, send, 403, f"cross-origin request from {origin!r} refused")
            return
        gradio_app = scope.get("app")
        user = self._user(gradio_app, headers)
        path = scope.get("path", "")
        if path.rstrip("/") == _UPLOAD_ROUTE:
            problem = self._upload_problem(user, headers)
            if problem:
                await _refuse(scope, receive, send, *problem)
                return
        if self.policy.users is not None:
            try:
                receive, session_hash = await _session_hash(scope, receive, path, method, headers)
            except _BodyTooLarge:
                await _refuse(scope, receive, send, 413, "request body too large")
                return
            if session_hash is not None and not self.policy.claim_session(session_hash, user):
                await _refuse(
                    scope, receive, send, 403, "this session belongs to another user; reload the page"
                )
                return
        token = CLIENT_ADDRESS.set((scope.get("client") or ("?",))[0])
        try:
            await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(token)

    def _user(self, gradio_app: Any, headers: dict[str, str]) -> str | None:
        """The logged-in user of this request (validated: revoked or expired tokens give None)."""
        if gradio_app is None or self.policy.users is None or not hasattr(gradio_app, "tokens"):
            return None
        if not isinstance(gradio_app.tokens, SessionTokens):
            # Installed on the first request, before anyone can have logged in; Gradio resets `tokens` to a
            # plain dict when it configures the app, so this cannot be done earlier from outside.
            gradio_app.tokens = SessionTokens(self.policy.users, self.policy.session_ttl_s)
        cookies = _cookies(headers.get("cookie", ""))
        cookie_id = getattr(gradio_app, "cookie_id", "")
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return gradio_app.tokens.get(token) if token else None

    def _upload_problem(self, user: str | None, headers: dict[str, str]) -> tuple[int, str] | None:
        if self.policy.users is None:
            return 403, "uploads are off without logins; add documents with `ragqa ingest PATH`"
        found = self.policy.users.get(user)
        if found is None:
            return 401, "log in first"
        if not found.is_admin:
            return 403, "only admins can upload documents"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_upload_bytes + 64 * 1024:  # multipart framing
            return 413, f"upload larger than the limit of {self.policy.max_upload_bytes // (1024 * 1024)} MB"
        return None


class _BodyTooLarge(Exception):
    """A JSON body over _MAX_JSON_BODY: refused with 413 instead of buffered."""


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


async def _session_hash(
    scope: dict, receive: Callable, path: str, method: str, headers: dict[str, str]
) -> tuple[Callable, str | None]:
    """The session hash a request names (query, path or JSON body), and a `receive` that replays the body."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("session_hash"):
        return receive, query["session_hash"][0]
    for prefix in _SESSION_PATH_ROUTES:
        if path.startswith(prefix):
            return receive, path[len(prefix) :].split("/", 1)[0] or None
    if method != "POST" or not path.startswith(_SESSION_BODY_ROUTES):
        return receive, None
    if "json" not in headers.get("content-type", ""):
        return receive, None
    body, replay = await _buffer_body(receive)
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return replay, None
    value = data.get("session_hash") if isinstance(data, dict) else None
    return replay, value if isinstance(value, str) else None


async def _buffer_body(receive: Callable) -> tuple[bytes, Callable]:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_JSON_BODY:
            raise _BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _refuse(scope: dict, receive: Callable, send: Callable, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    from starlette.responses import JSONResponse

    await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)


def build_policy(config: Any, users: Users | None) -> AccessPolicy:
    return AccessPolicy(
        hosts=allowed_hosts(config.host, tuple(config.allowed_hosts)),
        port=int(config.port),
        users=users,
        session_ttl_s=float(config.session_ttl_hours) * 3600.0,
        max_upload_bytes=int(config.max_file_mb * 1024 * 1024),
    )


def launch_options(config: Any, users: Users | None, throttle: LoginThrottle | None = None) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` that put the access rules in front of the Gradio app."""
    from starlette.middleware import Middleware

    policy = build_policy(config, users)
    guard = LoginGuard(users, throttle) if users is not None else None
    return {
        "auth": guard.check if guard is not None else None,
        "app_kwargs": {"middleware": [Middleware(AccessGuard, policy=policy)]},
        "max_file_size": policy.max_upload_bytes,
    }
