"""The feedback store: every question asked, what was shown, and what raters said about it.

`FeedbackStore` is the only way the app, the CLI and training read or write feedback; no SQL lives
outside this package. One writer connection per process, short transactions with group commit
(concurrent writes share one transaction and one commit, each in its own SAVEPOINT: commit.py). The database is a
SQLite file in WAL mode (default, `sqlite_db.py`) or a PostgreSQL database shared by several app
replicas (`postgresql://` DSN, `postgres_db.py`); the SQL and the API are the same. See the class
docstring for the API and its guarantees.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from feedback_store.commit import GroupCommit, Request, fail_closed, run_batch
from feedback_store.errors import (
    FeedbackConflict,
    FeedbackError,
    FeedbackNotFound,
    FeedbackStoreUnavailable,
    FeedbackValidationError,
)
from feedback_store.migrations import LATEST_VERSION, migrate, schema_version
from feedback_store.pairs import demonstrations, interaction_pairs, normalize_text
from feedback_store.postgres_db import PostgresBackend, is_postgres_dsn
from feedback_store.records import (
    SIMULATED_PREFIX,
    CandidateRecord,
    CorrectionRecord,
    ImportedChatRating,
    ImportedDemonstration,
    ImportedPreference,
    ImportResult,
    InteractionIds,
    InteractionRecord,
    NewCandidate,
    RankingRecord,
    RatingRecord,
)
from feedback_store.sqlite_db import SqliteBackend, sqlite_path_from_dsn

__all__ = ["FeedbackStore", "feedback_target", "sqlite_path_from_dsn"]

T = TypeVar("T")

DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_BUSY_TIMEOUT_S = 5.0
_MAX_ID_CHARS = 200  # session ids, user names, model versions, labels, client tokens
MAX_REASON_CHARS = 2000  # a rating's reason: a few sentences; longer text belongs in a correction
DSN_ENV = "RAGQA_FEEDBACK_DSN"


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dumps_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def feedback_target(default: str | Path) -> str | Path:
    """Where the app's feedback goes: $RAGQA_FEEDBACK_DSN when set (e.g. postgresql://... shared by replicas),
    else `default` (the SQLite file RAGQA_HOME/feedback.db)."""
    return os.environ.get(DSN_ENV) or default


class _Grouped:
    """Walk rows ordered by interaction id alongside the interactions (a merge join)."""

    def __init__(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self._rows = iter(rows)
        self._pending = next(self._rows, None)

    def take(self, interaction_id: int) -> list[tuple[Any, ...]]:
        rows = []
        while self._pending is not None and self._pending[0] <= interaction_id:
            if self._pending[0] == interaction_id:
                rows.append(tuple(self._pending[1:]))
            self._pending = next(self._rows, None)
        return rows


class FeedbackStore:
    """Durable record of questions, the passages and candidate answers shown, and all feedback.

    Open with `FeedbackStore.open(path_or_dsn, *, max_text_chars=100_000, busy_timeout_s=5.0,
    read_only=False, synchronous="FULL")` (a SQLite path / `sqlite:///` DSN, or `postgresql://` shared by
    several processes; creates the file or tables and applies migrations); use as a context manager or call
    `close()`. One instance is shared by all threads of a process.

    Writes (on the process's single writer connection; writes from concurrent threads are grouped into one
    short transaction (SQLite `BEGIN IMMEDIATE`, PostgreSQL `BEGIN` READ COMMITTED), each in its own SAVEPOINT
    so it fails alone, and one COMMIT: see commit.GroupCommit; when the call returns, the row is committed, and
    durable with synchronous=FULL):
      record_interaction(question, passages, candidates, *, context=(), session_id, user=None,
                         client_token=None) -> InteractionIds
          passages: Passage or dicts with `source`, `text` (+ `chunk_id`, `score`, `rank`), rank order.
          candidates: dicts with `text`, `model_version`, optional `sampling` (dict: seed, temperature,
          top_p, ...), `latency_ms`, `label` (default "A", "B", ... by position).
          context: earlier turns as {"role": "user"|"assistant", "content": str}.
      add_candidates(interaction_id, candidates, *, client_token=None) -> list[int]
      record_ranking(interaction_id, order, *, session_id, user=None, both_bad=False,
                     client_token=None) -> int
          order: groups of candidate ids, best first, e.g. [[a], [b, c]] (b and c tied). both_bad=True
          means no candidate is acceptable; `order` may then be empty.
      record_rating(candidate_id, up, *, reason=None, comment=None, session_id, user=None,
                    client_token=None) -> int
      withdraw_rating(candidate_id, *, session_id, user=None, client_token=None) -> int
          a row saying the session took its rating back; the latest row of a session counts.
      record_correction(interaction_id, text, *, replaces=None, session_id, user=None,
                        client_token=None) -> int
          replaces: candidate ids the written answer is better than (None: none in particular).
      delete_session(session_id) -> int     everything a rater session recorded (rows deleted)
      save_conversation(conversation_id, owner, title, state) -> None   a chat as the app shows it (upsert)
      import_items(items, *, origin) -> ImportResult   used by feedback_store.importer (one transaction)

    Reads (own connections, a consistent snapshot each):
      iter_interactions() -> Iterator[InteractionRecord]   streamed in id order, for export
      get_interaction(interaction_id) -> InteractionRecord
      list_conversations(owner, limit=50) -> [(id, title, updated_at)], newest first;
      load_conversation(conversation_id, owner) -> dict | None
      count_interactions() -> int;  stats() -> dict;  integrity_check() -> str ("ok");  schema_version() -> int

    Guarantees: a `client_token` makes a write idempotent (the same token records once and returns
    the first result, also across processes sharing a PostgreSQL store: the token is the primary key of
    client_tokens, claimed with ON CONFLICT DO NOTHING; reusing it for a different request raises
    FeedbackConflict). Bad input raises
    FeedbackValidationError (FeedbackNotFound for unknown ids). A locked, read-only or full database
    raises FeedbackStoreUnavailable: the transaction is rolled back and earlier writes are intact.
    Raters whose session id or user starts with "simulated:" are reported as simulated everywhere.
    """

    def __init__(self, backend: SqliteBackend | PostgresBackend, *, max_text_chars: int) -> None:
        self._backend = backend
        self.backend = backend.name  # "sqlite" | "postgresql"
        # A SQLite store's file; for PostgreSQL the DSN without its password (for messages and manifests).
        self.path: Path | str = backend.path if isinstance(backend, SqliteBackend) else backend.location
        self.max_text_chars = max_text_chars
        self.busy_timeout_s = backend.busy_timeout_s
        self.read_only = backend.read_only
        self.synchronous = backend.synchronous
        self._lock = threading.Lock()  # guards the writer connection
        self._writer: Any = None  # sqlite3.Connection | postgres_db.PgConnection
        self._group = GroupCommit(self._run_batch)
        self._closed = False

    # ----------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(
        cls,
        path_or_dsn: str | Path,
        *,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        read_only: bool = False,
        synchronous: str = "FULL",
    ) -> FeedbackStore:
        """Open (creating and migrating if needed) the store at a file path, `sqlite:///` or `postgresql://` DSN.

        read_only=True never writes: the schema must already be current, and every write raises
        FeedbackStoreUnavailable. synchronous="FULL" (default) makes an acknowledged write durable: SQLite
        fsyncs the WAL at every commit, PostgreSQL runs with synchronous_commit=on (survives a power cut).
        "NORMAL" survives a crash of the process (the app) but the last commits before an OS or server crash
        may be lost (the database stays consistent), for about 4x the write rate on a disk with slow fsync
        (benchmarks/store_throughput.py). busy_timeout_s bounds the wait for another writer's lock
        (SQLite busy_timeout, PostgreSQL lock_timeout) before FeedbackStoreUnavailable.
        """
        if synchronous not in ("FULL", "NORMAL"):
            raise FeedbackError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        settings = {"busy_timeout_s": busy_timeout_s, "read_only": read_only, "synchronous": synchronous}
        if is_postgres_dsn(str(path_or_dsn)):
            backend: SqliteBackend | PostgresBackend = PostgresBackend(str(path_or_dsn), **settings)
        else:
            backend = SqliteBackend(sqlite_path_from_dsn(path_or_dsn), **settings)
        store = cls(backend, max_text_chars=max_text_chars)
        try:
            if read_only:
                store._check_current_schema()
            else:
                backend.prepare()
                store._writer = backend.connect(write=True)
                migrate(store._writer)
        except backend.errors as exc:
            store.close()
            raise backend.translate(exc) from exc
        except BaseException:
            store.close()
            raise
        return store

    def _check_current_schema(self) -> None:
        if not self._backend.exists():
            raise FeedbackStoreUnavailable(f"no feedback database at {self.path}")
        with self._backend.reader() as conn:
            version = schema_version(conn)
        if version != LATEST_VERSION:
            raise FeedbackStoreUnavailable(
                f"the feedback database {self.path} is at schema v{version}, this code needs "
                f"v{LATEST_VERSION}; open it once writable to migrate it"
            )

    def close(self) -> None:
        """Close the writer connection. Further writes raise FeedbackError."""
        with self._lock:
            self._closed = True
            if self._writer is not None:
                self._backend.close_writer(self._writer)
                self._writer = None

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------------------- validation

    def _text(self, name: str, value: Any, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise FeedbackValidationError(f"{name} must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise FeedbackValidationError(f"{name} is empty")
        if self._backend.forbids_nul and "\x00" in value:
            raise FeedbackValidationError(
                f"{name} contains a NUL character (U+0000), which PostgreSQL cannot store; remove it"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FeedbackValidationError(
                f"{name} is not valid Unicode text ({exc.reason} at character {exc.start})"
            ) from None
        if len(value) > self.max_text_chars:
            raise FeedbackValidationError(
                f"{name} has {len(value)} characters, more than the limit of {self.max_text_chars}"
            )
        return value

    @staticmethod
    def _ident(name: str, value: Any, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise FeedbackValidationError(f"{name} must be a non-empty string, got {value!r}")
        if len(value) > _MAX_ID_CHARS:
            raise FeedbackValidationError(f"{name} is longer than {_MAX_ID_CHARS} characters")
        return value

    def _passages(self, passages: Sequence[Any]) -> list[tuple[int, str, str, str, float | None]]:
        rows = []
        for i, p in enumerate(passages, start=1):
            d = p.to_dict() if hasattr(p, "to_dict") else p
            if not isinstance(d, Mapping):
                raise FeedbackValidationError(f"passage {i} must be a Passage or a dict")
            rank = int(d.get("rank", i))
            score = d.get("score")
            rows.append(
                (
                    rank,
                    str(d.get("chunk_id", "")),
                    self._text(f"passage {i} source", d.get("source"), allow_empty=True),
                    self._text(f"passage {i} text", d.get("text"), allow_empty=True),
                    None if score is None else float(score),
                )
            )
        if len({r[0] for r in rows}) != len(rows):
            raise FeedbackValidationError("two passages have the same rank")
        return rows

    def _context(self, context: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
        turns = []
        for i, turn in enumerate(context, start=1):
            if not isinstance(turn, Mapping) or turn.get("role") not in ("user", "assistant", "system"):
                raise FeedbackValidationError(f"context turn {i} must be {{'role': 'user'|'assistant', ...}}")
            turns.append(
                {"role": str(turn["role"]), "content": self._text(f"context turn {i}", turn.get("content"))}
            )
        return turns

    def _candidates(self, candidates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not candidates:
            raise FeedbackValidationError("at least one candidate answer is needed")
        out = []
        for i, c in enumerate(candidates, start=1):
            if isinstance(c, NewCandidate):
                c = asdict(c)
            if not isinstance(c, Mapping):
                raise FeedbackValidationError(f"candidate {i} must be a NewCandidate or a dict")
            sampling = c.get("sampling", {}) or {}
            if not isinstance(sampling, Mapping):
                raise FeedbackValidationError(f"candidate {i} sampling must be a dict")
            latency = c.get("latency_ms")
            out.append(
                {
                    "text": self._text(f"candidate {i} text", c.get("text"), allow_empty=True),
                    "model_version": self._ident(f"candidate {i} model_version", c.get("model_version")),
                    "sampling": dumps_json(dict(sampling)),
                    "latency_ms": None if latency is None else float(latency),
                    "label": self._ident(f"candidate {i} label", c.get("label"), optional=True),
                }
            )
        return out

    # ----------------------------------------------------------------------------- write path

    def _write(
        self,
        kind: str,
        session_id: str | Callable[[], str],
        client_token: str | None,
        request: Any,
        work: Callable[[Any], T],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> T:
        """Run `work` durably (see commit.GroupCommit); replay the stored result for a known client token.

        The token is claimed first (`INSERT ... ON CONFLICT DO NOTHING` on its primary key), so two processes
        submitting the same token at once record it once: the second waits for the first's commit, finds the
        row and replays its result (PostgreSQL); on SQLite the write lock serialises them anyway.
        """
        if client_token is not None:
            self._ident("client_token", client_token)
        request_sha = hashlib.sha256(dumps_json([kind, request]).encode()).hexdigest()
        if self.read_only:
            raise FeedbackStoreUnavailable(
                f"the feedback database {self.path} was opened read-only; nothing was recorded"
            )

        def run(conn: Any) -> T:
            if client_token is not None:
                claimed = conn.execute(
                    "INSERT INTO client_tokens (token, kind, request_sha256, result_json, session_id, "
                    "created_at) VALUES (?, ?, ?, '', ?, ?) ON CONFLICT (token) DO NOTHING RETURNING token",
                    (
                        client_token,
                        kind,
                        request_sha,
                        session_id if isinstance(session_id, str) else "",
                        now_utc(),
                    ),
                ).fetchone()
                if claimed is None:
                    return self._replay(conn, client_token, kind, request_sha, decode)
            result = work(conn)
            if client_token is not None:
                conn.execute(
                    "UPDATE client_tokens SET result_json = ?, session_id = ? WHERE token = ?",
                    (
                        dumps_json(encode(result)),
                        session_id if isinstance(session_id, str) else session_id(),
                        client_token,
                    ),
                )
            return result

        return self._group.submit(run)

    @staticmethod
    def _replay(conn: Any, token: str, kind: str, request_sha: str, decode: Callable[[Any], T]) -> T:
        row = conn.execute(
            "SELECT kind, request_sha256, result_json FROM client_tokens WHERE token = ?", (token,)
        ).fetchone()
        if (row[0], row[1]) != (kind, request_sha):
            raise FeedbackConflict(
                f"client token {token!r} was already used for a different "
                f"{row[0]} request; use a new token per submission"
            )
        return decode(json.loads(row[2]))

    def _run_batch(self, batch: list[Request]) -> None:
        """The group-commit leader's call: run the batch on the writer connection (commit.run_batch)."""
        with self._lock:
            if self._writer is None:
                fail_closed(batch)
                return
            self._writer = run_batch(self._backend, self._writer, batch)

    @staticmethod
    def insert_candidates(conn: Any, interaction_id: int, cands: list[dict[str, Any]], now: str) -> list[int]:
        start = conn.execute(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM candidates WHERE interaction_id = ?",
            (interaction_id,),
        ).fetchone()[0]
        ids = []
        for pos, c in enumerate(cands, start=start):
            label = c["label"] or (chr(ord("A") + pos) if pos < 26 else f"C{pos + 1}")
            cur = conn.execute(
                "INSERT INTO candidates (interaction_id, position, label, text, model_version, sampling_json, "
                "latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    interaction_id,
                    pos,
                    label,
                    c["text"],
                    c["model_version"],
                    c["sampling"],
                    c["latency_ms"],
                    now,
                ),
            )
            ids.append(int(cur.fetchone()[0]))
        return ids

    @staticmethod
    def _require_interaction(conn: Any, interaction_id: int) -> None:
        if conn.execute("SELECT 1 FROM interactions WHERE id = ?", (interaction_id,)).fetchone() is None:
            raise FeedbackNotFound(f"no interaction with id {interaction_id}")

    @staticmethod
    def _candidate_texts(conn: Any, interaction_id: int) -> dict[int, str]:
        rows = conn.execute("SELECT id, text FROM candidates WHERE interaction_id = ?", (interaction_id,))
        return {int(r[0]): r[1] for r in rows}

    def record_interaction(
        self,
        question: str,
        passages: Sequence[Any],
        candidates: Sequence[Mapping[str, Any]],
        *,
        context: Sequence[Mapping[str, str]] = (),
        session_id: str,
        user: str | None = None,
        client_token: str | None = None,
    ) -> InteractionIds:
        """Record a question, the passages shown and the candidate answers; return their ids."""
        question = self._text("question", question)
        passage_rows = self._passages(passages)
        turns = self._context(context)
        cands = self._candidates(candidates)
        session_id = self._ident("session_id", session_id)
        user = self._ident("user", user, optional=True)
        request = [question, passage_rows, turns, cands, session_id, user]

        def work(conn: Any) -> InteractionIds:
            now = now_utc()
            cur = conn.execute(
                "INSERT INTO interactions (question, context_json, session_id, user_name, created_at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (question, dumps_json(turns), session_id, user, now),
            )
            iid = int(cur.fetchone()[0])
            conn.executemany(
                "INSERT INTO passages_shown (interaction_id, rank, chunk_id, source, text, score) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(iid, *row) for row in passage_rows],
            )
            return InteractionIds(iid, tuple(self.insert_candidates(conn, iid, cands, now)))

        return self._write(
            "interaction",
            session_id,
            client_token,
            request,
            work,
            lambda r: {"interaction_id": r.interaction_id, "candidate_ids": list(r.candidate_ids)},
            lambda d: InteractionIds(int(d["interaction_id"]), tuple(int(x) for x in d["candidate_ids"])),
        )

    def add_candidates(
        self,
        interaction_id: int,
        candidates: Sequence[Mapping[str, Any]],
        *,
        client_token: str | None = None,
    ) -> list[int]:
        """Add alternatives generated later for the same interaction (labels continue: C, D, ...)."""
        cands = self._candidates(candidates)
        interaction_id = int(interaction_id)

        session: list[str] = []  # the interaction's session: delete_session also forgets this token

        def work(conn: Any) -> list[int]:
            # Locks the interaction row on PostgreSQL: another replica adding candidates to it waits, so
            # the next free position is computed once per commit.
            row = conn.execute(
                "SELECT session_id FROM interactions WHERE id = ?" + self._backend.lock_for_update,
                (interaction_id,),
            ).fetchone()
            if row is None:
                raise FeedbackNotFound(f"no interaction with id {interaction_id}")
            session.append(row[0])
            return self.insert_candidates(conn, interaction_id, cands, now_utc())

        return self._write(
            "candidates", lambda: session[0], client_token, [interaction_id, cands], work, list, list
        )

    def record_ranking(
        self,
        interaction_id: int,
        order: Sequence[Sequence[int]],
        *,
        session_id: str,
        user: str | None = None,
        both_bad: bool = False,
        client_token: str | None = None,
    ) -> int:
        """Record a full order (groups best first, a group = a tie) or "both bad"; return its id."""
        interaction_id = int(interaction_id)
        groups = [[int(c) for c in group] for group in order]
        groups = [g for g in groups if g] if both_bad else groups
        if not both_bad and (not groups or any(not g for g in groups)):
            raise FeedbackValidationError(
                "the ranking is empty (or has an empty group); rank at least one candidate or mark both bad"
            )
        flat = [c for g in groups for c in g]
        if len(set(flat)) != len(flat):
            dup = next(c for c in flat if flat.count(c) > 1)
            raise FeedbackValidationError(f"candidate {dup} appears twice in the ranking")
        session_id = self._ident("session_id", session_id)
        user = self._ident("user", user, optional=True)

        def work(conn: Any) -> int:
            self._require_interaction(conn, interaction_id)
            known = self._candidate_texts(conn, interaction_id)
            unknown = [c for c in flat if c not in known]
            if unknown:
                raise FeedbackValidationError(
                    f"candidates {unknown} are not answers of interaction {interaction_id} "
                    f"(its candidates: {sorted(known)})"
                )
            cur = conn.execute(
                "INSERT INTO rankings (interaction_id, order_json, both_bad, session_id, user_name, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (interaction_id, dumps_json(groups), int(both_bad), session_id, user, now_utc()),
            )
            return int(cur.fetchone()[0])

        request = [interaction_id, groups, both_bad, session_id, user]
        return self._write("ranking", session_id, client_token, request, work, int, int)

    def record_rating(
        self,
        candidate_id: int,
        up: bool,
        *,
        reason: str | None = None,
        comment: str | None = None,
        session_id: str,
        user: str | None = None,
        client_token: str | None = None,
    ) -> int:
        """Record a thumbs up (up=True) or down on one candidate, with optional reason tags and a comment."""
        return self._rating_row(
            candidate_id, bool(up), False, reason, comment, session_id, user, client_token
        )

    def withdraw_rating(
        self,
        candidate_id: int,
        *,
        session_id: str,
        user: str | None = None,
        client_token: str | None = None,
    ) -> int:
        """Record that this rater session took its rating of the candidate back (un-liked it).

        A row, not a DELETE: the history stays auditable, and "the latest row of a session wins" makes a
        withdrawal cancel the session's earlier thumbs in stats and the export.
        """
        return self._rating_row(candidate_id, False, True, None, None, session_id, user, client_token)

    def _rating_row(
        self,
        candidate_id: int,
        up: bool,
        withdrawn: bool,
        reason: str | None,
        comment: str | None,
        session_id: str,
        user: str | None,
        client_token: str | None,
    ) -> int:
        candidate_id = int(candidate_id)
        if reason is not None:
            reason = self._text("reason", reason, allow_empty=True)
            if len(reason) > MAX_REASON_CHARS:
                raise FeedbackValidationError(
                    f"the reason has {len(reason)} characters; the limit is {MAX_REASON_CHARS}: shorten it"
                )
        if comment is not None:
            comment = self._text("comment", comment, allow_empty=True)
        session_id = self._ident("session_id", session_id)
        user = self._ident("user", user, optional=True)

        def work(conn: Any) -> int:
            if conn.execute("SELECT 1 FROM candidates WHERE id = ?", (candidate_id,)).fetchone() is None:
                raise FeedbackNotFound(f"no candidate with id {candidate_id}")
            cur = conn.execute(
                "INSERT INTO ratings (candidate_id, up, reason, comment, withdrawn, session_id, user_name, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (candidate_id, int(up), reason, comment, int(withdrawn), session_id, user, now_utc()),
            )
            return int(cur.fetchone()[0])

        request = [candidate_id, up, withdrawn, reason, comment, session_id, user]
        return self._write("rating", session_id, client_token, request, work, int, int)

    def record_correction(
        self,
        interaction_id: int,
        text: str,
        *,
        replaces: Sequence[int] | None = None,
        session_id: str,
        user: str | None = None,
        client_token: str | None = None,
    ) -> int:
        """Record an answer written by the rater, better than the candidates in `replaces`."""
        interaction_id = int(interaction_id)
        text = self._text("correction", text)
        replaced = [int(c) for c in (replaces or [])]
        if len(set(replaced)) != len(replaced):
            raise FeedbackValidationError("a candidate appears twice in `replaces`")
        session_id = self._ident("session_id", session_id)
        user = self._ident("user", user, optional=True)

        def work(conn: Any) -> int:
            self._require_interaction(conn, interaction_id)
            known = self._candidate_texts(conn, interaction_id)
            for cid in replaced:
                if cid not in known:
                    raise FeedbackValidationError(
                        f"candidate {cid} is not an answer of interaction {interaction_id}"
                    )
                if normalize_text(known[cid]) == normalize_text(text):
                    raise FeedbackValidationError(
                        f"the correction is identical to candidate {cid} it replaces; edit the answer "
                        "or rate it up instead"
                    )
            cur = conn.execute(
                "INSERT INTO corrections (interaction_id, text, replaces_json, session_id, user_name, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (interaction_id, text, dumps_json(replaced), session_id, user, now_utc()),
            )
            return int(cur.fetchone()[0])

        request = [interaction_id, text, replaced, session_id, user]
        return self._write("correction", session_id, client_token, request, work, int, int)

    def delete_session(self, session_id: str) -> int:
        """Delete everything one rater session recorded; return how many items were deleted.

        Counts interactions asked in the session (their candidates, passages and all feedback on them
        go too) plus the session's rankings, ratings and corrections on other interactions.
        """
        session_id = self._ident("session_id", session_id)

        def work(conn: Any) -> int:
            n = 0
            for table in ("rankings", "ratings", "corrections", "interactions"):
                n += conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,)).rowcount
            conn.execute("DELETE FROM client_tokens WHERE session_id = ?", (session_id,))
            return n

        return self._write("delete", session_id, None, [session_id], work, int, int)

    def save_conversation(
        self, conversation_id: str, owner: str, title: str, state: Mapping[str, Any]
    ) -> None:
        """Save (insert or replace) one chat of `owner` as the app shows it, so it survives a reload.

        `state` is the app's JSON-able view of the chat (messages, model turns, which message is which
        candidate); the feedback itself lives in the other tables, this is only the conversation list.
        """
        conversation_id = self._ident("conversation_id", conversation_id)
        owner = self._ident("owner", owner)
        title = self._text("title", title)[:200]
        body = self._text("conversation", dumps_json(dict(state)))

        def work(conn: Any) -> None:
            now = now_utc()
            conn.execute(
                "INSERT INTO conversations (id, owner, title, state_json, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET title = excluded.title, "
                "state_json = excluded.state_json, updated_at = excluded.updated_at "
                "WHERE conversations.owner = excluded.owner",
                (conversation_id, owner, title, body, now, now),
            )

        self._write("conversation", owner, None, None, work, lambda r: None, lambda d: None)

    def list_conversations(self, owner: str, limit: int = 50) -> list[tuple[str, str, str]]:
        """`owner`'s saved chats as (id, title, updated_at), most recently used first."""
        with self._backend.reader() as conn:
            rows = conn.execute(
                "SELECT id, title, updated_at FROM conversations WHERE owner = ? "
                "ORDER BY updated_at DESC, id LIMIT ?",
                (owner, int(limit)),
            ).fetchall()
        return [(str(i), str(t), str(u)) for i, t, u in rows]

    def load_conversation(self, conversation_id: str, owner: str) -> dict[str, Any] | None:
        """One saved chat of `owner` (None if there is none: another owner's id finds nothing)."""
        with self._backend.reader() as conn:
            row = conn.execute(
                "SELECT state_json FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def import_items(
        self, items: Sequence[ImportedPreference | ImportedDemonstration | ImportedChatRating], *, origin: str
    ) -> ImportResult:
        """Store validated imported items in ONE transaction (all or nothing), marked `origin`.

        Each item becomes its own interaction with the verbatim prompt. Preferences from a ranking
        become two candidates ranked [[chosen], [rejected]]; from a correction, the rejected candidate
        and a correction replacing it; from thumbs, two candidates rated up and down. A chat rating
        (ImportedChatRating) keeps its question and earlier turns; its answers become candidates, the
        rated one rated (with the reason), and a sibling vote also becomes a ranking. An item whose
        content (a chat rating: whose key) was imported before (any file) is skipped and counted as a
        duplicate.
        """
        origin = self._ident("origin", origin)
        for i, item in enumerate(items, start=1):
            for name in ("chosen", "rejected", "text", "question"):
                if hasattr(item, name):
                    self._text(f"item {i} {name}", getattr(item, name), allow_empty=name != "question")

        def work(conn: Any) -> ImportResult:
            imported = duplicates = 0
            for item in items:
                token = "import:" + self._import_key(item)
                # Claimed before inserting: the same file imported by two processes at once imports once.
                claimed = conn.execute(
                    "INSERT INTO client_tokens (token, kind, request_sha256, result_json, session_id, created_at) "
                    "VALUES (?, 'import', ?, '', ?, ?) ON CONFLICT (token) DO NOTHING RETURNING token",
                    (token, hashlib.sha256(token.encode()).hexdigest(), origin, now_utc()),
                ).fetchone()
                if claimed is None:
                    duplicates += 1
                    continue
                iid = self._insert_imported(conn, item, origin)
                conn.execute(
                    "UPDATE client_tokens SET result_json = ? WHERE token = ?",
                    (dumps_json({"interaction_id": iid}), token),
                )
                imported += 1
            return ImportResult(imported, duplicates, origin)

        return self._write("import", origin, None, None, work, asdict, lambda d: ImportResult(**d))

    @staticmethod
    def _import_key(item: ImportedPreference | ImportedDemonstration | ImportedChatRating) -> str:
        """What makes an imported item the same item again: a chat rating's own key (its message id),
        otherwise a hash of its content."""
        if isinstance(item, ImportedChatRating):
            return item.key
        payload = asdict(item) if is_dataclass(item) else dict(item)
        payload["prompt"] = [dict(m) for m in item.prompt]
        return hashlib.sha256(dumps_json([type(item).__name__, payload]).encode()).hexdigest()

    def _insert_imported(
        self, conn: Any, item: ImportedPreference | ImportedDemonstration | ImportedChatRating, origin: str
    ) -> int:
        now = now_utc()
        context = [dict(m) for m in item.context] if isinstance(item, ImportedChatRating) else []
        cur = conn.execute(
            "INSERT INTO interactions (question, context_json, session_id, user_name, created_at, prompt_json) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (
                item.question,
                dumps_json(context),
                origin,
                item.rater,
                now,
                json.dumps([dict(m) for m in item.prompt], ensure_ascii=False),
            ),
        )
        iid = int(cur.fetchone()[0])

        def cand(text: str, model: str) -> dict[str, Any]:
            return {"text": text, "model_version": model, "sampling": "{}", "latency_ms": None, "label": None}

        def feedback(table: str, cols: str, values: tuple[Any, ...]) -> None:
            marks = ", ".join("?" * (len(values) + 3))
            conn.execute(
                f"INSERT INTO {table} ({cols}, session_id, user_name, created_at) VALUES ({marks})",
                (*values, origin, item.rater, now),
            )

        if isinstance(item, ImportedChatRating):
            ids = self.insert_candidates(conn, iid, [cand(text, model) for text, model in item.answers], now)
            rated, siblings = ids[0], ids[1:]
            conn.execute(
                "INSERT INTO ratings (candidate_id, up, reason, comment, session_id, user_name, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rated, int(item.up), item.reason, item.comment, origin, item.rater, now),
            )
            if siblings:
                order = [[rated], siblings] if item.up else [siblings, [rated]]
                feedback("rankings", "interaction_id, order_json, both_bad", (iid, dumps_json(order), 0))
        elif isinstance(item, ImportedDemonstration):
            if item.source == "thumbs_up":
                (cid,) = self.insert_candidates(conn, iid, [cand(item.text, item.model)], now)
                feedback("ratings", "candidate_id, up", (cid, 1))
            else:
                feedback("corrections", "interaction_id, text, replaces_json", (iid, item.text, "[]"))
        elif item.source == "correction":
            (rid,) = self.insert_candidates(conn, iid, [cand(item.rejected, item.rejected_model)], now)
            feedback(
                "corrections", "interaction_id, text, replaces_json", (iid, item.chosen, dumps_json([rid]))
            )
        else:
            a, b = self.insert_candidates(
                conn,
                iid,
                [cand(item.chosen, item.chosen_model), cand(item.rejected, item.rejected_model)],
                now,
            )
            if item.source == "thumbs":
                feedback("ratings", "candidate_id, up", (a, 1))
                feedback("ratings", "candidate_id, up", (b, 0))
            else:
                feedback("rankings", "interaction_id, order_json, both_bad", (iid, dumps_json([[a], [b]]), 0))
        return iid

    # ----------------------------------------------------------------------------- read path

    def schema_version(self) -> int:
        """The schema version of the database file (LATEST_VERSION once opened writable)."""
        with self._backend.reader() as conn:
            return schema_version(conn)

    def count_interactions(self) -> int:
        """How many interactions the store holds (cheap; for progress bars)."""
        with self._backend.reader() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0])

    def iter_interactions(self, *, start_id: int = 0) -> Iterator[InteractionRecord]:
        """Every interaction with id >= start_id and all its feedback, in id order, from one snapshot.

        Streams: one merge join over the tables ordered by interaction id, so memory stays at one
        interaction whatever the store's size.
        """
        backend = self._backend
        with backend.reader() as conn:
            try:
                backend.begin_snapshot(conn)  # one read snapshot for all the cursors below
                yield from self._iter_records(conn, start_id)
            except backend.errors as exc:
                raise backend.translate(exc) from exc

    def _iter_records(self, conn: Any, start_id: int) -> Iterator[InteractionRecord]:
        def grouped(sql: str) -> _Grouped:
            return _Grouped(self._backend.stream(conn, sql, (start_id,)))

        passages = grouped(
            "SELECT interaction_id, rank, chunk_id, source, text, score FROM passages_shown "
            "WHERE interaction_id >= ? ORDER BY interaction_id, rank"
        )
        candidates = grouped(
            "SELECT interaction_id, id, position, label, text, model_version, sampling_json, latency_ms, "
            "created_at FROM candidates WHERE interaction_id >= ? ORDER BY interaction_id, position"
        )
        rankings = grouped(
            "SELECT interaction_id, id, order_json, both_bad, session_id, user_name, created_at FROM rankings "
            "WHERE interaction_id >= ? ORDER BY interaction_id, id"
        )
        ratings = grouped(
            "SELECT c.interaction_id, r.id, r.candidate_id, r.up, r.reason, r.session_id, r.user_name, "
            "r.created_at, r.withdrawn, r.comment FROM ratings r JOIN candidates c ON c.id = r.candidate_id "
            "WHERE c.interaction_id >= ? ORDER BY c.interaction_id, r.id"
        )
        corrections = grouped(
            "SELECT interaction_id, id, text, replaces_json, session_id, user_name, created_at FROM corrections "
            "WHERE interaction_id >= ? ORDER BY interaction_id, id"
        )
        rows = self._backend.stream(
            conn,
            "SELECT id, question, context_json, session_id, user_name, created_at, prompt_json "
            "FROM interactions WHERE id >= ? ORDER BY id",
            (start_id,),
        )
        for iid, question, context_json, session, user, created, prompt_json in rows:
            yield InteractionRecord(
                id=iid,
                question=question,
                context=tuple(json.loads(context_json)),
                passages=tuple(
                    {"rank": r, "chunk_id": c, "source": s, "text": t, "score": sc}
                    for r, c, s, t, sc in passages.take(iid)
                ),
                session_id=session,
                user=user,
                created_at=created,
                verbatim_prompt=None if prompt_json is None else tuple(json.loads(prompt_json)),
                candidates=tuple(
                    CandidateRecord(cid, pos, label, text, model, json.loads(sampling), lat, ts)
                    for cid, pos, label, text, model, sampling, lat, ts in candidates.take(iid)
                ),
                rankings=tuple(
                    RankingRecord(rid, tuple(tuple(g) for g in json.loads(order)), bool(bad), s, u, ts)
                    for rid, order, bad, s, u, ts in rankings.take(iid)
                ),
                ratings=tuple(
                    RatingRecord(rid, cid, bool(up), reason, s, u, ts, bool(wd), comment)
                    for rid, cid, up, reason, s, u, ts, wd, comment in ratings.take(iid)
                ),
                corrections=tuple(
                    CorrectionRecord(cid, text, tuple(json.loads(rep)), s, u, ts)
                    for cid, text, rep, s, u, ts in corrections.take(iid)
                ),
            )

    def get_interaction(self, interaction_id: int) -> InteractionRecord:
        """One interaction with all its feedback; FeedbackNotFound if there is none with this id."""
        interaction_id = int(interaction_id)
        for rec in self.iter_interactions(start_id=interaction_id):
            if rec.id == interaction_id:
                return rec
            break
        raise FeedbackNotFound(f"no interaction with id {interaction_id}")

    def stats(self) -> dict[str, Any]:
        """Counts for the CLI and the app's admin view.

        Keys: interactions, candidates, rankings, both_bad, pairs (preference pairs implied, before
        export de-duplication), demonstrations, ratings_up, ratings_down (latest or not; withdrawals
        excluded), ratings_withdrawn, corrections, raters (distinct
        rater sessions), simulated_raters, imported_interactions, schema_version, and per_model_version:
        {version: {candidates, up, down, wins, losses}} (wins/losses over the implied pairs).
        """
        with self._backend.reader() as conn:
            self._backend.begin_snapshot(conn)
            one = lambda sql: int(conn.execute(sql).fetchone()[0])  # noqa: E731
            out: dict[str, Any] = {
                "interactions": one("SELECT COUNT(*) FROM interactions"),
                "candidates": one("SELECT COUNT(*) FROM candidates"),
                "rankings": one("SELECT COUNT(*) FROM rankings"),
                "both_bad": one("SELECT COUNT(*) FROM rankings WHERE both_bad = 1"),
                "ratings_up": one("SELECT COUNT(*) FROM ratings WHERE up = 1 AND withdrawn = 0"),
                "ratings_down": one("SELECT COUNT(*) FROM ratings WHERE up = 0 AND withdrawn = 0"),
                "ratings_withdrawn": one("SELECT COUNT(*) FROM ratings WHERE withdrawn = 1"),
                "corrections": one("SELECT COUNT(*) FROM corrections"),
                "imported_interactions": one(
                    "SELECT COUNT(*) FROM interactions WHERE session_id LIKE 'imported:%'"
                ),
                "schema_version": schema_version(conn),
            }
            raters = [
                r[0]
                for r in conn.execute(
                    "SELECT session_id FROM rankings UNION SELECT session_id FROM ratings "
                    "UNION SELECT session_id FROM corrections"
                )
            ]
            out["raters"] = len(raters)
            out["simulated_raters"] = sum(r.startswith(SIMULATED_PREFIX) for r in raters)
            per_model: dict[str, dict[str, int]] = {}
            for model, n, up, down in conn.execute(
                "SELECT c.model_version, COUNT(DISTINCT c.id), "
                "COALESCE(SUM(CASE WHEN r.up = 1 AND r.withdrawn = 0 THEN 1 END), 0), "
                "COALESCE(SUM(CASE WHEN r.up = 0 AND r.withdrawn = 0 THEN 1 END), 0) "
                "FROM candidates c LEFT JOIN ratings r ON r.candidate_id = c.id "
                "GROUP BY c.model_version ORDER BY c.model_version"
            ):
                per_model[model] = {"candidates": n, "up": int(up), "down": int(down), "wins": 0, "losses": 0}
        pairs = demos = 0
        for rec in self.iter_interactions():
            for pair in interaction_pairs(rec):
                pairs += 1
                for model, key in ((pair.chosen_model, "wins"), (pair.rejected_model, "losses")):
                    if model in per_model:
                        per_model[model][key] += 1
            demos += len(demonstrations(rec))
        out.update(pairs=pairs, demonstrations=demos, per_model_version=per_model)
        return out

    def integrity_check(self) -> str:
        """'ok' when the database's integrity and foreign-key checks pass, else their messages."""
        with self._backend.reader() as conn:
            problems = self._backend.integrity_problems(conn)
        return "\n".join(problems) if problems else "ok"
