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
