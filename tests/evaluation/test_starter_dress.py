"""evaluation/starter_dress.py: dressed copies keep the question, the words and the target; only markup is added."""

from __future__ import annotations

import random
import re

import pytest

from evaluation.starter_dress import dress_mix, dress_row, title_of
from retrieval.prompt import NO_ANSWER, render_prompt
from training.starter import is_test_qid

P1 = (
    "Hamas has continued to be a major player in Palestine. From 2000 to 2007 it killed 542 people. "
    "In the January 2006 legislative election it won the majority of the seats."
)
P2 = "Another major division within Islamism is between what Graham Fuller has described as guardians of tradition."


def _row(answer: str, qid: str = "abc123") -> dict:
    passages = [
        {"text": P1, "source": "islamism-4954caea3841.txt"},
        {"text": P2, "source": "islamism-73444de24e73.txt"},
    ]
    prompt = render_prompt("Which group won the 2006 election?", passages)
    meta = {"qid": qid, "kind": "answer" if answer != NO_ANSWER else "unanswerable"}
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "meta": meta}


def _passages(row: dict) -> list[str]:
    return re.findall(
        r"\(source: [^)]*\)\n(.*?)(?=\n\n\[\d+\] |\n\nQuestion: )", row["prompt"][-1]["content"], re.S
    )


def _unmarked(text: str, title: str) -> str:
    text = text.removeprefix(f"# {title} ").replace("`", "")
    return " ".join(w for w in text.split() if w != "-")


def test_a_dressed_copy_keeps_question_words_and_target() -> None:
    row = _row("Hamas [1].")
    seen_code = seen_bullets = seen_heading = gold_in_code = 0
    for seed in range(60):
        dressed = dress_row(row, random.Random(seed))
        assert dressed["prompt"][:-1] == row["prompt"][:-1]  # the system prompt
        user = dressed["prompt"][-1]["content"]
        assert user.endswith("\n\nQuestion: Which group won the 2006 election?")
        assert re.findall(r"^\[(\d+)\] \(source: ", user, re.M) == ["1", "2"]
        for text, original in zip(_passages(dressed), (P1, P2), strict=True):
            assert _unmarked(text, "Islamism") == original  # the same words, only markup added
            seen_code += "`" in text
            seen_bullets += text.startswith("- ") or "# Islamism - " in text
            seen_heading += text.startswith("# Islamism ")
        answer = dressed["completion"][0]["content"]
        assert answer in ("Hamas [1].", "`Hamas` [1].")
        if answer.startswith("`"):  # the target keeps the backticks only where the passage shows them
            gold_in_code += 1
            assert "`Hamas`" in _passages(dressed)[0]
        assert dressed["meta"]["qid"] == "abc123:md" and dressed["meta"]["dressed"] is True
    assert row["completion"][0]["content"] == "Hamas [1]."  # the input row is not changed
    assert min(seen_code, seen_bullets, seen_heading, gold_in_code) > 0


def test_an_abstention_stays_the_abstention() -> None:
    row = _row(NO_ANSWER)
    for seed in range(20):
        assert dress_row(row, random.Random(seed))["completion"][0]["content"] == NO_ANSWER


def test_a_dressed_copy_lands_in_its_questions_split() -> None:
    for i in range(200):
        qid = f"q{i:04d}"
        assert is_test_qid(qid + ":md", 0.05) == is_test_qid(qid, 0.05)
        assert is_test_qid(qid + ":view1:md", 0.05) == is_test_qid(qid, 0.05)


def test_the_mix_draws_without_overlap_and_is_reproducible() -> None:
    rows = [_row("Hamas [1].", qid=f"q{i}") for i in range(30)]
    mix = dress_mix(rows, dressed=10, plain=12, seed=3)
    assert len(mix) == 22 and sum(bool(r["meta"].get("dressed")) for r in mix) == 10
    bases = [r["meta"]["qid"].removesuffix(":md") for r in mix]
    assert len(set(bases)) == 22  # no row both dressed and plain
    assert mix == dress_mix(rows, dressed=10, plain=12, seed=3)
    assert mix != dress_mix(rows, dressed=10, plain=12, seed=4)
    with pytest.raises(ValueError, match="31 rows"):
        dress_mix(rows, dressed=20, plain=11, seed=0)


def test_titles_come_from_the_built_source_names() -> None:
    assert title_of("yuan-dynasty-f2b8ccc1b269.txt") == "Yuan dynasty"
    assert title_of("force-93e62e6f177c.txt") == "Force"
