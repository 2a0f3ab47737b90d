"""benchmarks/abstention_curve.py: the ROC AUC, the precision/recall curve and the ceiling at precision 0.7."""

from __future__ import annotations

import pytest

from benchmarks.abstention_curve import best_recall_at, curve, roc_auc, summarise


def test_auc_is_one_half_for_a_score_unrelated_to_the_label() -> None:
    assert roc_auc([1.0, 1.0, 2.0, 2.0], [True, False, True, False]) == pytest.approx(0.5)
    assert roc_auc([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == pytest.approx(1.0)
    assert roc_auc([0.0, 1.0], [True, False]) == pytest.approx(0.0)


def test_curve_counts_ties_together_and_the_ceiling_takes_the_most_recall_at_the_precision() -> None:
    scores = [0.9, 0.8, 0.8, 0.5, 0.1]
    labels = [True, True, False, True, False]
    points = curve(scores, labels)
    # thresholds high to low; the two 0.8s enter together
    assert [p["abstains"] for p in points] == [1, 3, 4, 5]
    assert points[1]["precision"] == pytest.approx(2 / 3) and points[1]["recall"] == pytest.approx(2 / 3)
    assert points[2]["precision"] == pytest.approx(3 / 4) and points[2]["recall"] == pytest.approx(1.0)
    best = best_recall_at(points, 0.7)
    assert best is not None and best["threshold"] == 0.5 and best["recall"] == pytest.approx(1.0)
    assert best_recall_at(points, 0.99) == points[0]
    assert best_recall_at(curve([0.1, 0.9], [True, False]), 0.7) is None


def test_summary_says_whether_the_line_is_reachable_and_keeps_the_greedy_point() -> None:
    rows = [
        {"unanswerable": u, "abstained": a, "logp_abstain": s, "margin": -s}
        for u, a, s in [(True, True, -0.1), (True, False, -0.2), (False, False, -3.0), (False, True, -4.0)]
    ]
    out = summarise(rows)
    assert out["greedy"] == {
        "precision": 0.5,
        "recall": 0.5,
        "abstained_of_unanswerable": 0.5,
        "abstained_of_answerable": 0.5,
    }
    assert out["logp_abstain"]["roc_auc"] == 1.0 and out["logp_abstain"]["line_reachable"]
    assert out["margin"]["roc_auc"] == 0.0 and not out["margin"]["line_reachable"]


def test_scores_are_the_log_probabilities_of_the_abstention_and_of_the_own_answer(tiny_llama_dir) -> None:
    """score_rows against a token-by-token computation: the prompt as the app renders it, the text, end of turn."""
    import torch

    from benchmarks.abstention_curve import load_model, score_rows
    from retrieval.prompt import NO_ANSWER, render_prompt

    passages = [{"text": "The mill opened in 1901.", "source": "mill.md"}]
    rows = [
        {
            "question": "When did the mill open?",
            "passages": passages,
            "answer": "1901 [1].",
            "abstained": False,
        },
        {"question": "Who owned it?", "passages": passages, "answer": NO_ANSWER, "abstained": True},
    ]
    score_rows(rows, str(tiny_llama_dir))
    tok, model = load_model(str(tiny_llama_dir))

    def logp(question: str, text: str) -> float:
        prompt = tok.apply_chat_template(
            render_prompt(question, passages), add_generation_prompt=True, return_dict=False
        )
        ids = list(prompt)
        total = 0.0
        for token in tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]:
            with torch.inference_mode():
                last = model(torch.tensor([ids])).logits[0, -1].float()
            total += float(torch.log_softmax(last, -1)[token])
            ids.append(token)
        return total

    first, second = rows
    assert first["logp_abstain"] == pytest.approx(logp(first["question"], NO_ANSWER), abs=1e-3)
    expected_margin = first["logp_abstain"] - logp(first["question"], "1901 [1].")
    assert first["margin"] == pytest.approx(expected_margin, abs=1e-3)
    assert second["margin"] == 0.0  # greedy abstained: its own answer is the abstention
