"""Import: round trip through a fresh store, hub-style TRL files, and malformed lines (nothing half-imported)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback_store.errors import FeedbackImportError
from feedback_store.export import KINDS, SPLITS, export_snapshot, file_name
from feedback_store.importer import import_file, parse_file
from feedback_store.store import FeedbackStore
from tests.feedback_store.feedback_history import History


def pair_set(out: Path) -> set[tuple[str, str, str]]:
    """What a preference export means for training: (prompt, chosen, rejected)."""
    pairs = set()
    for split in SPLITS:
        for line in (out / file_name("preferences", split)).read_text(encoding="utf-8").split("\n")[:-1]:
            r = json.loads(line)
            pairs.add((json.dumps(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"]))
    return pairs


def lines(out: Path, kind: str) -> list[str]:
    return [
        x for s in SPLITS for x in (out / file_name(kind, s)).read_text(encoding="utf-8").split("\n")[:-1]
    ]


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_round_trip_gives_the_same_pairs(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    export_snapshot(store, tmp_path / "one", test_fraction=0.25)
    merged = _write(
        tmp_path / "preferences.jsonl", [json.loads(x) for x in lines(tmp_path / "one", "preferences")]
    )
    with FeedbackStore.open(tmp_path / "fresh.db") as fresh:
        result = import_file(fresh, merged)
        assert (result.imported, result.duplicates, result.origin) == (4, 0, "imported:preferences.jsonl")
        again = import_file(fresh, merged)  # importing the same file twice imports it once
        assert (again.imported, again.duplicates) == (0, 4)
        export_snapshot(fresh, tmp_path / "two", test_fraction=0.25)
        recs = list(fresh.iter_interactions())
        assert {r.origin for r in recs} == {"imported:preferences.jsonl"}
    assert pair_set(tmp_path / "two") == pair_set(tmp_path / "one")
    # Same questions -> same split; same sources; the simulated flag survives.
    for split in SPLITS:
        one = [
            json.loads(x)
            for x in (tmp_path / "one" / file_name("preferences", split))
            .read_text(encoding="utf-8")
            .split("\n")[:-1]
        ]
        two = [
            json.loads(x)
            for x in (tmp_path / "two" / file_name("preferences", split))
            .read_text(encoding="utf-8")
            .split("\n")[:-1]
        ]
        key = lambda r: (r["chosen"][0]["content"], r["rejected"][0]["content"])  # noqa: E731
        assert sorted(map(key, one)) == sorted(map(key, two))
        assert {key(r): (r["meta"]["source"], r["meta"]["simulated"]) for r in one} == {
            key(r): (r["meta"]["source"], r["meta"]["simulated"]) for r in two
        }
        assert all(r["meta"]["origin"] == "imported:preferences.jsonl" for r in two)


def test_round_trip_of_sft(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    export_snapshot(store, tmp_path / "one", test_fraction=0.0)
    with FeedbackStore.open(tmp_path / "fresh.db") as fresh:
        assert (
            import_file(fresh, tmp_path / "one" / "sft.train.jsonl").imported == 1
        )  # corrections only: a thumbs-up is unpaired data, not a demonstration
        export_snapshot(fresh, tmp_path / "two", test_fraction=0.0)
    msgs = lambda out: sorted(json.dumps(json.loads(x)["messages"]) for x in lines(out, "sft"))  # noqa: E731
    assert msgs(tmp_path / "two") == msgs(tmp_path / "one")
    assert lines(tmp_path / "two", "preferences") == []


def test_hub_style_files(tmp_path: Path) -> None:
    plain = _write(
        tmp_path / "plain.jsonl",
        [
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "extra": 1},
        ],
    )
    implicit = _write(
        tmp_path / "implicit.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
            }
        ],
    )
    completion = _write(
        tmp_path / "pc.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Say yes"}],
                "completion": [{"role": "assistant", "content": "yes"}],
            }
        ],
    )
    with FeedbackStore.open(tmp_path / "f.db") as store:
        assert import_file(store, plain).imported == 2
        assert import_file(store, implicit).imported == 1
        assert import_file(store, completion).imported == 1
        export_snapshot(store, tmp_path / "out", test_fraction=0.0)
    rows = [json.loads(x) for x in lines(tmp_path / "out", "preferences")]
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert (rows[0]["chosen"][0]["content"], rows[0]["rejected"][0]["content"]) == ("4", "5")
    assert rows[2]["prompt"] == [{"role": "user", "content": "Hi"}]
    assert rows[2]["meta"]["origin"] == "imported:implicit.jsonl"
    sft = [json.loads(x) for x in lines(tmp_path / "out", "sft")]
    assert sft[0]["messages"] == [
        {"role": "user", "content": "Say yes"},
        {"role": "assistant", "content": "yes"},
    ]
    prompts = [json.loads(x) for x in lines(tmp_path / "out", "prompts")]
    assert [p["question"] for p in prompts] == ["What is 2+2?", "Capital of France?", "Hi", "Say yes"]


GOOD = {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", r"bad.jsonl:2: not valid JSON \(Expecting property name"),
        ("[1, 2]", "bad.jsonl:2: expected a JSON object, got list"),
        ({"question": "q"}, r"bad.jsonl:2: unknown format \(keys \['question'\]\)"),
        (
            {**GOOD, "chosen": "same", "rejected": " same "},
            "bad.jsonl:2: chosen and rejected are the same answer",
        ),
        ({**GOOD, "chosen": 3}, "bad.jsonl:2: chosen must be a non-empty list"),
        ({**GOOD, "prompt": []}, "bad.jsonl:2: prompt must be a non-empty list"),
        (
            {**GOOD, "prompt": [{"role": "robot", "content": "x"}]},
            r"bad.jsonl:2: prompt\[0\] has role 'robot'",
        ),
        (
            {**GOOD, "prompt": [{"role": "user"}]},
            r"bad.jsonl:2: prompt\[0\] must be an object with 'role' and 'content'",
        ),
        (
            {**GOOD, "prompt": [{"role": "assistant", "content": "x"}]},
            "bad.jsonl:2: prompt must end with a user message",
        ),
        (
            {**GOOD, "chosen": [{"role": "user", "content": "x"}]},
            "bad.jsonl:2: chosen must be exactly one assistant",
        ),
        (
            {**GOOD, "rejected": [{"role": "assistant", "content": 5}]},
            r"rejected\[0\]: content must be a string",
        ),
        ({**GOOD, "chosen": "x" * 100_001}, "bad.jsonl:2: a text has 100001 characters"),
        ({**GOOD, "meta": "oops"}, "bad.jsonl:2: 'meta' must be an object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "bad.jsonl:2: a sft line in a preferences file"),
        ({"prompt": "p", "question": "q", "interaction_id": 1}, "bad.jsonl:2: this is a prompts file"),
    ],
)
def test_malformed_line_imports_nothing(tmp_path: Path, bad: object, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD, bad, {**GOOD, "chosen": "c"}])
    with FeedbackStore.open(tmp_path / "f.db") as store:
        with pytest.raises(FeedbackImportError, match=message):
            import_file(store, path)
        assert store.stats()["interactions"] == 0
        assert store.integrity_check() == "ok"


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD, "{", "", GOOD, "7"])
    with pytest.raises(FeedbackImportError) as err:
        parse_file(path)
    assert str(err.value).splitlines() == [
        "nothing was imported; fix these lines:",
        "bad.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "bad.jsonl:5: expected a JSON object, got int",
    ]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FeedbackImportError, match="no such file"):
        parse_file(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(FeedbackImportError, match="not UTF-8 text"):
        parse_file(tmp_path / "latin1.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(FeedbackImportError, match="no lines to import"):
        parse_file(tmp_path / "empty.jsonl")


def test_all_export_kinds_parse_or_explain(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    export_snapshot(store, tmp_path, test_fraction=0.0)
    for kind in KINDS:
        path = tmp_path / file_name(kind, "train")
        if kind == "prompts":
            with pytest.raises(FeedbackImportError, match="prompts file"):
                parse_file(path)
        else:
            assert parse_file(path)
