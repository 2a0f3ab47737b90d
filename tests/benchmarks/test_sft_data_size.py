"""benchmarks/sft_data_size.py's row choice: the training rows never share a question with the scored ones."""

from __future__ import annotations

from benchmarks.sft_data_size import pick_rows


def _row(qid: str, kind: str, view: int = 0) -> dict:
    return {
        "prompt": [],
        "completion": [],
        "meta": {"qid": qid, "kind": kind, "view": view, "answers": ["x"]},
    }


def test_training_rows_and_scored_rows_never_share_a_question() -> None:
    rows = [_row(f"q{i}", "answer" if i % 3 else "unanswerable") for i in range(600)]
    rows += [_row(f"q{i}:view1", "answer", view=1) for i in range(0, 600, 7)]  # second showings: never picked
    train, dev = pick_rows(rows, n=400, dev_n=20, seed=0)
    train_q = {r["meta"]["qid"].split(":")[0] for r in train}
    dev_q = {r["meta"]["qid"].split(":")[0] for r in dev}
    assert len(train) == 400 and 0 < len(dev) <= 20
    assert not train_q & dev_q
    assert all(r["meta"]["view"] == 0 for r in train + dev)
    # the same seed picks the same rows (the README's numbers can be rerun)
    assert pick_rows(rows, n=400, dev_n=20, seed=0) == (train, dev)


def test_the_abstention_share_sets_the_training_mix_and_keeps_the_split() -> None:
    kinds = ["answer", "answer", "unanswerable", "off_topic", "retrieval_miss"]
    rows = [_row(f"q{i}", kinds[i % 5]) for i in range(1000)]
    train, dev = pick_rows(rows, n=200, dev_n=20, seed=0, abstain_share=0.15)
    assert len(train) == 200
    assert sum(r["meta"]["kind"] != "answer" for r in train) == 30
    assert not {r["meta"]["qid"] for r in train} & {r["meta"]["qid"] for r in dev}
    assert pick_rows(rows, n=200, dev_n=20, seed=0)[1] == dev  # the scored questions do not depend on the mix
