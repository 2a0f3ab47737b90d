"""Each QA and preference format parsed from a small fixture; clear errors for bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from evaluation.formats import EvalDataError, load_pairs, load_qa, parse_hh_dialogue


def test_squad_v2_with_an_unanswerable_question(fixtures_dir: Path) -> None:
    ds = load_qa(fixtures_dir / "squad_v2.json")
    assert ds.format == "squad"
    assert [e.qid for e in ds.examples] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert ds.num_unanswerable == 1
    q1, q2, q3 = ds.examples[:3]
    assert q1.answers == ("France",)  # duplicate gold answers collapse
    assert q2.answers == ("Denmark, Iceland and Norway", "Denmark")
    assert q3.unanswerable and q3.answers == ()  # plausible_answers are not gold
    assert len(ds.documents) == 4
    # questions on the same paragraph share its document; the document is the context itself
    assert q1.doc_id == q3.doc_id != ds.examples[3].doc_id
    assert ds.documents[q1.doc_id].text.startswith("The Normans were")
    assert q1.doc_id.startswith("normans-") and q1.doc_id.endswith(".txt")


def test_nq_open_line_with_ctxs(fixtures_dir: Path) -> None:
    ds = load_qa(fixtures_dir / "nq_open.jsonl")
    assert ds.format == "nq-open"
    assert len(ds.examples) == 2 and len(ds.documents) == 3  # the distractor ctx is a document too
    violin = ds.examples[1]
    assert violin.answers == ("four",)
    assert (
        ds.documents[violin.doc_id].text
        == "Violin\n\nThe violin typically has four strings tuned in perfect fifths."
    )
    assert ds.examples[0].answers == ("Wilhelm Conrad Röntgen", "Röntgen")


def test_plain_jsonl_with_context_source_and_no_answer(fixtures_dir: Path) -> None:
    ds = load_qa(fixtures_dir / "plain.jsonl")
    assert ds.format == "jsonl"
    p1, p2, p3 = ds.examples
    assert p1.doc_id is not None and p1.answers == ("blue",)
    assert p2.source == "guide/install.md" and p2.doc_id is None and p2.answers == ("docs/install.md",)
    assert p3.unanswerable and p3.answers == ()


def test_gzip_and_explicit_format(tmp_path: Path, fixtures_dir: Path) -> None:
    gz = tmp_path / "nq.jsonl.gz"
    gz.write_bytes(gzip.compress((fixtures_dir / "nq_open.jsonl").read_bytes()))
    assert len(load_qa(gz, "nq-open").examples) == 2


def test_unknown_format_names_the_keys_found(fixtures_dir: Path) -> None:
    with pytest.raises(EvalDataError, match=r"found keys label, query"):
        load_qa(fixtures_dir / "unknown.jsonl")
    with pytest.raises(EvalDataError, match="unknown QA format"):
        load_qa(fixtures_dir / "plain.jsonl", "csv")


def test_empty_and_missing_files(tmp_path: Path, fixtures_dir: Path) -> None:
    with pytest.raises(EvalDataError, match="is empty"):
        load_qa(fixtures_dir / "empty.json")
    with pytest.raises(EvalDataError, match="does not exist"):
        load_qa(tmp_path / "nope.json")
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answers": ["b"]}\n{not json\n')
    with pytest.raises(EvalDataError, match="line 2 is not valid JSON"):
        load_qa(tmp_path / "bad.jsonl")
    (tmp_path / "noq.json").write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": []}]})
    )
    with pytest.raises(EvalDataError, match="holds no questions"):
        load_qa(tmp_path / "noq.json")


def test_hh_pairs(fixtures_dir: Path, tmp_path: Path) -> None:
    fmt, pairs = load_pairs(fixtures_dir / "hh_pairs.jsonl")
    assert fmt == "hh" and len(pairs) == 2
    assert pairs[0].prompt == ({"role": "user", "content": "What is a good name for a cat?"},)
    assert pairs[0].chosen == "Many people like Luna or Milo."
    assert pairs[0].rejected == "Cats do not need names."
    # multi-turn: the earlier turns are the prompt
    assert [m["role"] for m in pairs[1].prompt] == ["user", "assistant", "user"]
    assert pairs[1].rejected == "Eggs."
    gz = tmp_path / "test.jsonl.gz"
    gz.write_bytes(gzip.compress((fixtures_dir / "hh_pairs.jsonl").read_bytes()))
    assert load_pairs(gz)[1] == pairs


def test_trl_pairs_explicit_implicit_and_standard(fixtures_dir: Path) -> None:
    fmt, pairs = load_pairs(fixtures_dir / "trl_pairs.jsonl")
    assert fmt == "trl" and len(pairs) == 3
    explicit, implicit, standard = pairs
    assert explicit.prompt[1] == {"role": "user", "content": "Capital of France?"}
    assert (explicit.chosen, explicit.rejected) == ("Paris [1].", "London.")
    assert implicit.prompt == ({"role": "user", "content": "2+2?"},) and (
        implicit.chosen,
        implicit.rejected,
    ) == ("4", "5")
    assert standard.prompt == ({"role": "user", "content": "Say hi"},) and standard.chosen == "hi"


def test_pairs_errors(fixtures_dir: Path) -> None:
    with pytest.raises(EvalDataError, match="found keys label, query"):
        load_pairs(fixtures_dir / "unknown.jsonl")
    with pytest.raises(EvalDataError, match="is empty"):
        load_pairs(fixtures_dir / "empty.json")


def test_parse_hh_dialogue_roles() -> None:
    msgs = parse_hh_dialogue("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:")
    assert msgs == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": ""},
    ]
