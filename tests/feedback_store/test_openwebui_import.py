"""Open WebUI's feedback export (Admin > Evaluations > Export) imports row by row, once, all or nothing.

The fixtures in tests/fixtures/openwebui/ are exports in Open WebUI's shape: `feedback-export.json` with
the message tree at snapshot.chat.chat.history (a multi-turn thumbs up, a thumbs down with reason and
comment, an arena vote), `feedback-export-flat-history.json` with it at snapshot.chat.history (a
regenerated answer voted down against its sibling), both with the extra fields Open WebUI writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from feedback_store.commands import add_commands
from feedback_store.errors import FeedbackImportError
from feedback_store.export import SPLITS, export_snapshot, file_name
from feedback_store.importer import import_file
from feedback_store.store import FeedbackStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openwebui"
NESTED = FIXTURES / "feedback-export.json"
FLAT = FIXTURES / "feedback-export-flat-history.json"
ALICE, BOB = "3f1c2a9e-7b0d-4e61-9a55-2c8d0e4b1f10", "b7e94d21-05aa-4c3e-8f1d-6a2e9c0d7b35"

INDEX_Q = "How do I index my own documents?"
INDEX_A = "Run `ragqa ingest PATH` on the folder; Markdown, text, HTML and PDF files are indexed."
AGAIN_Q = "And if I run it again on the same folder?"
AGAIN_A = "A second run is incremental: files whose content hash is unchanged are skipped."
PORT_A = "The chat listens on port 8080."
BAD_A, BAD_GOOD = (
    "Both bad deletes the two answers.",
    ("Both bad records that neither candidate is acceptable; it yields no preference pair."),
)
VERSIONS_GOOD = "Each version is a folder in the model registry under RAGQA_HOME/models."
VERSIONS_BAD = "They are stored in the cloud."


def rows(store: FeedbackStore) -> list[dict[str, Any]]:
    """Each imported interaction as plain data: what the store now says was asked, answered and rated."""
    out = []
    for rec in store.iter_interactions():
        label = {c.id: c.label for c in rec.candidates}
        out.append(
            {
                "origin": rec.origin,
                "user": rec.user,
                "question": rec.question,
                "context": [dict(m) for m in rec.context],
                "prompt": rec.prompt_messages(),
                "candidates": [(c.label, c.text, c.model_version) for c in rec.candidates],
                "ratings": [(label[r.candidate_id], r.up, r.reason, r.comment) for r in rec.ratings],
                "rankings": [[[label[c] for c in g] for g in r.order] for r in rec.rankings],
            }
        )
    return out


def exported(out: Path, kind: str) -> list[dict[str, Any]]:
    text = "".join((out / file_name(kind, s)).read_text(encoding="utf-8") for s in SPLITS)
    return [json.loads(line) for line in text.splitlines()]


def test_both_tree_placements_import_row_by_row(store: FeedbackStore, tmp_path: Path) -> None:
    first = import_file(store, NESTED)
    assert (first.imported, first.duplicates, first.origin) == (3, 0, "imported:feedback-export.json")
    assert import_file(store, FLAT).imported == 1
    q = lambda text: {"role": "user", "content": text}  # noqa: E731
    assert rows(store) == [
        {  # multi-turn: the question is the rated answer's parent; the turns above it are the context
            "origin": "imported:feedback-export.json",
            "user": ALICE,
            "question": AGAIN_Q,
            "context": [q(INDEX_Q), {"role": "assistant", "content": INDEX_A}],
            "prompt": [q(INDEX_Q), {"role": "assistant", "content": INDEX_A}, q(AGAIN_Q)],
            "candidates": [("A", AGAIN_A, "llama3.1:8b")],
            "ratings": [("A", True, None, None)],
            "rankings": [],
        },
        {  # thumbs down: reason and comment kept
            "origin": "imported:feedback-export.json",
            "user": BOB,
            "question": "Which port does the chat listen on?",
            "context": [],
            "prompt": [q("Which port does the chat listen on?")],
            "candidates": [("A", PORT_A, "qwen2.5:7b")],
            "ratings": [("A", False, "Inaccurate information", "It is 7860, see getting started.")],
            "rankings": [],
        },
        {  # arena vote (rating 1): the rated sibling above the other; models are the ones behind the arena
            "origin": "imported:feedback-export.json",
            "user": ALICE,
            "question": "What does Both bad do?",
            "context": [],
            "prompt": [q("What does Both bad do?")],
            "candidates": [("A", BAD_GOOD, "llama3.1:8b"), ("B", BAD_A, "qwen2.5:7b")],
            "ratings": [("A", True, None, None)],
            "rankings": [[["A"], ["B"]]],
        },
        {  # regenerated answer voted down (rating -1), older tree placement: its sibling is chosen
            "origin": "imported:feedback-export-flat-history.json",
            "user": BOB,
            "question": "Where are model versions stored?",
            "context": [],
            "prompt": [q("Where are model versions stored?")],
            "candidates": [("A", VERSIONS_BAD, "llama3.1:8b"), ("B", VERSIONS_GOOD, "llama3.1:8b")],
            "ratings": [("A", False, "Made up", None)],
            "rankings": [[["B"], ["A"]]],
        },
    ]
    export_snapshot(store, tmp_path / "out", test_fraction=0.0)
    pairs = [
        (
            r["prompt"][-1]["content"],
            r["chosen"][0]["content"],
            r["rejected"][0]["content"],
            r["meta"]["source"],
        )
        for r in exported(tmp_path / "out", "preferences")
    ]
    assert pairs == [
        ("What does Both bad do?", BAD_GOOD, BAD_A, "ranking"),
        ("Where are model versions stored?", VERSIONS_GOOD, VERSIONS_BAD, "ranking"),
    ]
    # A 👍 is a `label: true` unpaired (KTO) row, not a demonstration.
    assert exported(tmp_path / "out", "sft") == []
    liked = [
        (r["prompt"] + r["completion"], r["meta"]["model_version"])
        for r in exported(tmp_path / "out", "unpaired")
        if r["label"] is True
    ]
    assert len(liked) == 2 and liked[1][0][-1]["content"] == BAD_GOOD  # the two 👍 answers
    assert liked[0] == (
        [
            q(INDEX_Q),
            {"role": "assistant", "content": INDEX_A},
            q(AGAIN_Q),
            {"role": "assistant", "content": AGAIN_A},
        ],
        "llama3.1:8b",
    )
    # A 👎 is a `label: false` row that keeps the rater's reason and comment apart.
    disliked = [
        (r["completion"][0]["content"], r["meta"]["reason"], r["meta"]["comment"])
        for r in exported(tmp_path / "out", "unpaired")
        if r["label"] is False
    ]
    assert (PORT_A, "Inaccurate information", "It is 7860, see getting started.") in disliked


def test_second_import_adds_nothing(store: FeedbackStore, tmp_path: Path) -> None:
    import_file(store, NESTED)
    again = import_file(store, NESTED)
    assert (again.imported, again.duplicates) == (0, 3)
    # Keyed by message id, not by file: the same records in a re-downloaded export are still known.
    copy = tmp_path / "export-downloaded-again.json"
    copy.write_text(json.dumps(json.loads(NESTED.read_text(encoding="utf-8"))[::-1]), encoding="utf-8")
    assert (import_file(store, copy).imported, store.count_interactions()) == (0, 3)


def _broken(tmp_path: Path, edit: Any) -> Path:
    records = json.loads(NESTED.read_text(encoding="utf-8"))
    edit(records)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r[2]["meta"].update(message_id="nope"),
            "broken.json: record 3 (id f0000003-aaaa-4bbb-8ccc-000000000003, message nope): "
            "the rated message (meta.message_id) 'nope' is not in the chat snapshot",
        ),
        (
            lambda r: r[1]["data"].update(rating=5),
            "record 2 (id f0000002-aaaa-4bbb-8ccc-000000000002, message u2-a1): data.rating must be 1 or -1, got 5",
        ),
        (
            lambda r: r[0]["snapshot"]["chat"].pop("chat"),
            "record 1 (id f0000001-aaaa-4bbb-8ccc-000000000001, message u1-a2): no message tree at "
            "snapshot.chat.chat.history.messages or snapshot.chat.history.messages",
        ),
        (
            lambda r: r[0]["snapshot"]["chat"]["chat"]["history"]["messages"]["u1-q2"].update(
                role="assistant"
            ),
            "record 1 (id f0000001-aaaa-4bbb-8ccc-000000000001, message u1-a2): "
            "the rated message's parent u1-q2 is not a user message",
        ),
    ],
)
def test_a_bad_record_fails_the_whole_file_in_one_line(
    store: FeedbackStore, tmp_path: Path, edit: Any, message: str
) -> None:
    with pytest.raises(FeedbackImportError) as err:
        import_file(store, _broken(tmp_path, edit))
    assert str(err.value).startswith("nothing was imported: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    assert store.count_interactions() == 0  # not even the good records before the bad one


def test_cli_detects_the_format(ragqa_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="ragqa")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["feedback", "import", str(NESTED)])
    assert args.func(args) == 0
    assert "imported 3 items" in capsys.readouterr().out
    with FeedbackStore.open(ragqa_home / "feedback.db") as s:
        assert s.count_interactions() == 3


def test_string_ratings_and_a_snapshot_without_the_tree(store: FeedbackStore, tmp_path: Path) -> None:
    """Open WebUI's API also stores the rating as "1"/"-1"; a snapshot may hold only the shown branch."""
    records = json.loads(FLAT.read_text(encoding="utf-8"))
    records[0]["data"]["rating"] = "-1"
    chat = records[0]["snapshot"]["chat"]
    chat.pop("history")
    chat["messages"] = [m for m in chat["messages"] if m["id"] != "u4-a1"]  # the branch on screen
    chat["messages"][0]["childrenIds"] = ["u4-a2"]
    path = tmp_path / "old-export.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    assert import_file(store, path).imported == 1
    (row,) = rows(store)
    assert row["candidates"] == [("A", VERSIONS_BAD, "llama3.1:8b")]  # no sibling on the branch: thumbs only
    assert (row["ratings"], row["rankings"]) == ([("A", False, "Made up", None)], [])


def test_a_chat_export_is_refused_with_what_to_export_instead(store: FeedbackStore, tmp_path: Path) -> None:
    chat = json.loads(NESTED.read_text(encoding="utf-8"))[0]["snapshot"]["chat"]  # {id, user_id, title, chat}
    path = tmp_path / "chat-export.json"
    path.write_text(json.dumps([chat]), encoding="utf-8")
    with pytest.raises(FeedbackImportError, match=r"record 1 .*this is a chat export .*Evaluations > Export"):
        import_file(store, path)
    assert store.count_interactions() == 0
