"""Access control and rate limits: hashed users file, roles, refusing to bind publicly without auth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.auth import AuthError, Users, check_bind, hash_password, verify_password
from app.cli import main
from app.limits import RateLimited, RateLimiter


def test_password_hashing() -> None:
    encoded = hash_password("correct horse", iterations=1000)
    assert encoded.startswith("pbkdf2_sha256$1000$") and "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong horse!", encoded)
    assert not verify_password("correct horse", "garbage")
    assert hash_password("same password", iterations=1000) != hash_password("same password", iterations=1000)
    with pytest.raises(AuthError, match="at least 8"):
        hash_password("short")


def test_users_file_roles_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    users = Users(path)
    assert not users
    users.add("alice", "alice-password", "admin")
    users.add("bob", "bob-password")
    again = Users(path)
    assert again.names() == ["alice", "bob"]
    assert again.check("alice", "alice-password") and not again.check("alice", "bob-password")
    assert not again.check("mallory", "alice-password")
    assert again.get("alice").is_admin and not again.get("bob").is_admin
    assert again.get("nobody") is None
    stored = json.loads(path.read_text())
    assert "alice-password" not in path.read_text() and stored["bob"]["role"] == "user"
    assert path.stat().st_mode & 0o777 == 0o600
    again.remove("bob")
    assert Users(path).names() == ["alice"]
    with pytest.raises(AuthError, match="role must be"):
        again.add("carol", "carol-password", "root")
    path.write_text("{not json")
    with pytest.raises(AuthError, match="not valid JSON"):
        Users(path)


def test_public_bind_needs_auth_or_insecure(tmp_path: Path) -> None:
    users = Users(tmp_path / "users.json")
    assert check_bind("127.0.0.1", users, insecure=False) is None
    with pytest.raises(AuthError, match="refusing to listen on 0.0.0.0"):
        check_bind("0.0.0.0", users, insecure=False)
    assert "WITHOUT authentication" in check_bind("0.0.0.0", users, insecure=True)
    users.add("alice", "alice-password", "admin")
    assert check_bind("0.0.0.0", users, insecure=False) is None


def test_serve_refuses_public_bind_without_users(capsys) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "7999"]) == 1
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err


def test_users_cli(ragqa_home: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("s3cret-pass\n"))
    assert main(["users", "add", "alice", "--role", "admin", "--password-stdin"]) == 0
    assert Users(ragqa_home / "users.json").check("alice", "s3cret-pass")
    assert main(["users", "list"]) == 0
    assert "alice  admin" in capsys.readouterr().out
    assert main(["users", "remove", "nobody"]) == 1
    assert "no user 'nobody'" in capsys.readouterr().err


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    limiter.check("alice")
    limiter.check("alice")
    with pytest.raises(RateLimited, match="try again in 10 s"):
        limiter.check("alice")
    limiter.check("bob")  # per user
    now[0] += 10.0
    limiter.check("alice")
    RateLimiter(per_minute=0).check("anyone")  # 0 disables the limit
