"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from evaluation import metrics as M
from retrieval.prompt import NO_ANSWER


def test_normalisation_is_squads() -> None:
    assert M.normalize_answer("The  Cat, sat! on a mat.") == "cat sat on mat"
    assert M.normalize_answer("An apple's core") == "apples core"
    # articles only as whole words: "theory" and "anthem" keep their letters
    assert M.normalize_answer("the theory of an anthem") == "theory of anthem"


def test_exact_match_and_f1_hand_computed() -> None:
    assert M.exact_match("the Eiffel Tower!", "Eiffel tower") == 1.0
    assert M.exact_match("Eiffel", "Eiffel tower") == 0.0
    # pred {big, red, dog}, gold {red, dog, barked}: 2 common, P = R = 2/3, F1 = 2/3
    assert M.token_f1("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    # repeated tokens count by multiplicity: pred [a1, a1] vs gold [a1]: P = 1/2, R = 1, F1 = 2/3
    assert M.token_f1("paris paris", "paris") == pytest.approx(2 / 3)
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("an", "Paris") == 0.0  # normalises to empty vs non-empty


def test_max_over_several_gold_answers() -> None:
    golds = ["Denmark, Iceland and Norway", "Denmark"]
    assert M.max_over_golds(M.exact_match, "denmark", golds) == 1.0
    # vs gold 1: pred {denmark, norway} gold {denmark, iceland, and, norway}: P=1, R=1/2 -> 2/3
    assert M.max_over_golds(M.token_f1, "Denmark Norway", golds) == pytest.approx(2 / 3)
    assert M.max_over_golds(M.token_f1, "anything", []) == 0.0


def test_citations_are_removed_before_scoring() -> None:
    assert M.strip_citations("Paris [1] is big [2, 3].") == "Paris is big."
    scores = M.score_answer("France [1].", ("France",), unanswerable=False)
    assert scores == {"em": 1.0, "f1": 1.0, "contains": True, "abstained": False}


def test_contains_is_token_aligned() -> None:
    assert M.contains_answer("It was won in 1066 AD.", ["1066"])
    assert not M.contains_answer("It was won in 10660.", ["1066"])
    assert M.contains_answer("by the Thomas Newcomen engine", ["Newcomen", "x"])


@pytest.mark.parametrize(
    "answer",
    [
        NO_ANSWER,
        f"{NO_ANSWER} [1]",
        "",
        "The passages do not contain information about this.",
        "The documents don't mention who did it.",
        "This is not mentioned in the passages.",
        "I cannot answer that from the given text.",
        "There is no information about Atlantis.",
        "I don't know.",
    ],
)
def test_abstention_variants(answer: str) -> None:
    assert M.is_abstention(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "The Normans did not have a king [1].",
        "France.",
        "Newcomen built it. The passages do not say when.",  # answers first; the hedge comes later
    ],
)
def test_answers_are_not_abstentions(answer: str) -> None:
    assert not M.is_abstention(answer)


def test_unanswerable_follows_squad2() -> None:
    assert M.score_answer(NO_ANSWER, (), unanswerable=True)["f1"] == 1.0
    assert M.score_answer("The Normans.", (), unanswerable=True) == {
        "em": 0.0,
        "f1": 0.0,
        "contains": False,
        "abstained": False,
    }
    # abstaining on an answerable question scores 0, even if the refusal shares words with the gold
    assert M.score_answer("The documents do not contain the answer.", ("the documents",), False)["f1"] == 0.0


def test_recall_and_mrr_on_hand_made_rankings() -> None:
    relevant = [
        [True, False, False],  # first gold at rank 1
        [False, False, True],  # rank 3
        [False, False, False],  # miss
        [False, True, True],  # rank 2 (first relevant counts)
    ]
    ranks = [M.first_relevant_rank(r) for r in relevant]
    assert ranks == [1, 3, None, 2]
    assert M.recall_at_k(ranks, 1) == 0.25
    assert M.recall_at_k(ranks, 2) == 0.5
    assert M.recall_at_k(ranks, 5) == 0.75
    assert M.mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert math.isnan(M.recall_at_k([], 1))


def test_percentiles_interpolate_like_numpy() -> None:
    assert M.percentile([4, 1, 3, 2], 50) == 2.5
    assert M.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)  # pos 2.85 -> 3 + 0.85
    assert M.percentile([7], 95) == 7
    assert math.isnan(M.percentile([], 50))


def test_abstention_precision_recall() -> None:
    abstained = [True, True, False, False, True]
    unanswerable = [True, False, True, False, True]
    s = M.abstention_scores(abstained, unanswerable)
    assert s["abstention_precision"] == pytest.approx(2 / 3)
    assert s["abstention_recall"] == pytest.approx(2 / 3)
    assert s["abstention_rate"] == pytest.approx(3 / 5)
    assert math.isnan(M.abstention_scores([False], [False])["abstention_precision"])


def test_answer_words_excludes_citations() -> None:
    assert M.answer_words("Paris is the capital [1].") == 4


def test_pair_metrics_and_length_buckets() -> None:
    chosen = [2.0, 1.0, 0.5, 3.0]
    rejected = [1.0, 1.5, 0.5, 0.0]
    chosen_words = [50, 5, 10, 10]
    rejected_words = [10, 5, 12, 40]  # diffs: +40, 0, -2, -30
    m = M.pair_metrics(chosen, rejected, chosen_words, rejected_words)
    assert m["accuracy"] == 0.5  # pair 1 and 4 correct; pair 3 is a tie, counted wrong
    assert m["ties"] == 1
    assert m["mean_margin"] == pytest.approx((1.0 - 0.5 + 0.0 + 3.0) / 4)
    buckets = {b["bucket"]: b for b in m["by_length_diff"]}
    assert buckets["> 30"]["n"] == 1 and buckets["> 30"]["accuracy"] == 1.0
    assert buckets["-3..3"]["n"] == 2 and buckets["-3..3"]["accuracy"] == 0.0
    assert buckets["-30..-11"]["n"] == 1 and buckets["-30..-11"]["accuracy"] == 1.0
    assert sum(b["n"] for b in m["by_length_diff"]) == 4
    # unequal-length pairs: 1 (+40, RM prefers chosen = longer), 3 (-2, tie: not "prefers longer"),
    # 4 (-30, RM prefers chosen = shorter): 1 of 3
    assert m["rm_prefers_longer_rate"] == pytest.approx(1 / 3)
    assert m["chosen_longer_rate"] == pytest.approx(1 / 3)


def test_length_bucket_edges() -> None:
    assert [M.length_bucket(d) for d in (-31, -30, -11, -10, -4, -3, 3, 4, 10, 11, 30, 31)] == [
        "< -30",
        "-30..-11",
        "-30..-11",
        "-10..-4",
        "-10..-4",
        "-3..3",
        "-3..3",
        "4..10",
        "4..10",
        "11..30",
        "11..30",
        "> 30",
    ]


def test_head_to_head_counts_ties_half() -> None:
    h = M.head_to_head([1.0, 0.0, 0.5, 0.2], [2.0, 0.0, 0.1, 0.2])
    assert (h["a"], h["b"], h["tie"]) == (1, 1, 2)
    assert h["win_rate_b"] == 0.5


# ---- confidence intervals ---------------------------------------------------------------------------------------
def test_paired_bootstrap_of_identical_models_is_zero() -> None:
    f1 = [0.0, 0.5, 1.0, 0.25, 0.0, 1.0, 0.75]
    d = M.paired_bootstrap_ci(f1, f1)
    assert (d["n"], d["diff"], d["ci"]) == (7, 0.0, [0.0, 0.0])


def test_paired_bootstrap_of_a_constant_shift_is_the_shift() -> None:
    b = [0.0, 0.5, 1.0, 0.25, 0.0, 0.75, 0.5, 0.125]
    a = [x + 0.25 for x in b]
    d = M.paired_bootstrap_ci(a, b)
    assert d["diff"] == pytest.approx(0.25)
    assert d["ci"] == pytest.approx([0.25, 0.25])
    assert (d["mean_a"], d["mean_b"]) == (pytest.approx(M.mean(a)), pytest.approx(M.mean(b)))
    # Unpaired, the same scores would give a wide interval: pairing removes the shared per-question spread.
    single = M.bootstrap_mean_ci(a)
    assert single["ci"][1] - single["ci"][0] > 0.3


def test_bootstrap_mean_ci_hand_checkable() -> None:
    # Half ones, half zeros, n = 100: the mean's standard error is 0.05, so the 95% interval is ~0.5 +- 0.098.
    ci = M.bootstrap_mean_ci([1.0] * 50 + [0.0] * 50)
    assert ci["mean"] == 0.5 and ci["n"] == 100 and ci["level"] == 0.95
    assert ci["ci"][0] == pytest.approx(0.40, abs=0.025) and ci["ci"][1] == pytest.approx(0.60, abs=0.025)
    assert M.bootstrap_mean_ci([1.0] * 50 + [0.0] * 50) == ci  # seeded: the same interval every time
    spread = [i / 37 for i in range(37)]  # means that do not fall on a coarse grid
    assert M.bootstrap_mean_ci(spread, seed=1)["ci"] != M.bootstrap_mean_ci(spread, seed=0)["ci"]
    assert M.bootstrap_mean_ci([0.3])["ci"] == [0.3, 0.3]
    empty = M.bootstrap_mean_ci([])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and all(math.isnan(x) for x in empty["ci"])
    with pytest.raises(ValueError, match="same questions"):
        M.paired_bootstrap_ci([1.0], [1.0, 0.0])


def test_paired_by_id_matches_questions_not_positions() -> None:
    a = [{"id": "q1", "f1": 1.0}, {"id": "q2", "f1": 0.5}, {"id": "q3", "f1": 0.0}, {"id": "q4", "f1": None}]
    b = [{"id": "q3", "f1": 0.0}, {"id": "q1", "f1": 0.5}, {"id": "q2", "f1": 0.5}, {"id": "q5", "f1": 1.0}]
    d = M.paired_by_id(a, b)
    # Shared and scored by both: q1 (1.0 vs 0.5), q2 (0.5 vs 0.5), q3 (0 vs 0) -> mean difference 0.5 / 3.
    assert d["n"] == 3 and d["diff"] == pytest.approx(0.5 / 3)
    assert (d["only_a"], d["only_b"], d["key"]) == (0, 1, "f1")  # q4 has no score (an error); q5 is B's only
    assert 0.0 <= d["ci"][0] <= d["diff"] <= d["ci"][1] <= 0.5
    with pytest.raises(ValueError, match="question id 'q1' twice"):
        M.paired_by_id(a + [{"id": "q1", "f1": 0.0}], b)


def test_pair_metrics_by_abstention_shows_an_rm_that_learnt_abstaining_is_worse() -> None:
    """Pairs where the abstention won, lost, or neither abstained: an RM that always scores the abstention lower is
    right on every "lost" pair and wrong on every "won" one (the loop's RM, which taught PPO to stop abstaining)."""
    chosen = [0.1, 0.2, 0.9, 0.8, 0.5, 0.1]
    rejected = [0.7, 0.6, 0.1, 0.2, 0.4, 0.3]
    no, answer = "The documents do not contain the answer.", "Paris [1]."
    texts = [(no, answer), (no, answer), (answer, no), (answer, no), (answer, "Lyon [2]."), (no, no)]
    outcomes = [M.abstention_outcome(c, r) for c, r in texts]
    assert outcomes == ["won", "won", "lost", "lost", "neither", "neither"]
    m = M.pair_metrics(chosen, rejected, [1] * 6, [1] * 6, outcomes)
    assert m["by_abstention"] == {
        "won": {"n": 2, "accuracy": 0.0},
        "lost": {"n": 2, "accuracy": 1.0},
        "neither": {"n": 2, "accuracy": 0.5},
    }
    assert "by_abstention" not in M.pair_metrics(chosen, rejected, [1] * 6, [1] * 6)
