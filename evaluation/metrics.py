"""Pure metric functions: answer scoring (SQuAD EM/F1), abstention, retrieval ranking, latency percentiles,
bootstrap confidence intervals.

THE SQuAD metric of the project: everything here works on plain strings and lists so it is unit-tested on
hand-computed cases and reused by `ragqa eval`, `ragqa compare`, `ragqa eval-rm`, the loop benchmark and the
retrain gate (training/evaluate.py: `squad_exact_match`, `squad_f1`).

Definitions (also written into every report):
  - Normalisation is SQuAD's official one: lowercase, drop punctuation, drop the articles a/an/the, collapse
    whitespace. Citation markers such as "[1]" or "[1, 2]" are removed from a model answer before scoring.
  - EM and F1 are the maximum over all gold answers.
  - Abstention: the answer is empty, or its first sentence says the passages lack the answer (the NO_ANSWER
    sentence of retrieval.prompt or a close variant, see `ABSTENTION_PATTERNS`).
  - Unanswerable questions follow SQuAD 2.0: EM = F1 = 1 iff the model abstained. An answerable question the
    model abstained on scores 0 (SQuAD 2.0 scores an empty prediction 0 against a non-empty gold).
  - Answer length is counted in words (whitespace-separated, citation markers removed).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from retrieval.prompt import NO_ANSWER

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)
_CITATION_MARK = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_FIRST_SENTENCE = re.compile(r"^(.*?)(?:[.!?](?:\s|$)|\n|$)", re.DOTALL)

# Matched against the first sentence after lowercasing and replacing curly apostrophes; each pattern is one
# way small instruction-tuned models say "I cannot answer from these passages".
ABSTENTION_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # "The passages do not contain / mention ..." (the subject must be the passages, so "The Normans did
        # not contain ..." stays an answer)
        r"\b(passages?|documents?|context|texts?|sources?)\b.*\b(do|does|did)(?: not|n't) "
        r"(contain|include|mention|provide|say|state|specify|give|answer)",
        r"\bnot (mentioned|provided|stated|specified|given|found|available|included|contained) in "
        r"(the|these|any of the) (passages?|documents?|context|texts?|sources?)\b",
        r"\b(cannot|can't|can not|unable to) (be )?(answer|find|determine|tell)",
        r"\bno (relevant )?(answer|information)\b",
        r"\bnot enough information\b",
        r"\bi (do not|don't) know\b",
    )
)


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lowercase, strip punctuation, drop a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def strip_citations(answer: str) -> str:
    """Remove "[1]"-style citation markers so they do not count as answer tokens."""
    return _CITATION_MARK.sub("", answer).strip()


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between one prediction and one gold answer (bag of normalised tokens)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    if not pred or not ref:
        # SQuAD 2.0: two empty answers agree, an empty and a non-empty one do not.
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """The best score of `prediction` against any gold answer (0 when there is none)."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """EM of a model answer: citation markers removed, max over the gold answers (0 when there is none)."""
    return max_over_golds(exact_match, strip_citations(prediction), golds)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 of a model answer: citation markers removed, max over the gold answers (0 when there is none)."""
    return max_over_golds(token_f1, strip_citations(prediction), golds)


def contains_answer(text: str, golds: Iterable[str]) -> bool:
    """True when some normalised gold answer appears, token-aligned, in the normalised text."""
    hay = f" {normalize_answer(text)} "
    return any(n and f" {n} " in hay for n in (normalize_answer(g) for g in golds))


def first_sentence(text: str) -> str:
    match = _FIRST_SENTENCE.match(text.strip())
    return match.group(1) if match else ""


def is_abstention(answer: str) -> bool:
    """Did the model decline to answer? (empty, NO_ANSWER, or a close variant in the first sentence)."""
    text = strip_citations(answer).strip()
    if not text or NO_ANSWER.lower().rstrip(".") in text.lower():
        return True
    head = first_sentence(text).lower().replace("\u2019", "'")
    return any(p.search(head) for p in ABSTENTION_PATTERNS)


ABSTENTION_OUTCOMES = ("won", "lost", "neither")


def abstention_outcome(chosen: str, rejected: str) -> str:
    """For a preference pair: "won" when only the chosen answer abstains, "lost" when only the rejected one does,
    else "neither" (none or both abstain)."""
    c, r = is_abstention(chosen), is_abstention(rejected)
    return "won" if c and not r else "lost" if r and not c else "neither"


def accuracy_by_abstention(margins: Sequence[float], outcomes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Pair accuracy (margin > 0) and count per abstention outcome (NaN accuracy where an outcome has no pairs).
    A reward model right where the abstention lost and wrong where it won has learnt "abstaining is worse", not
    when it is right."""
    return {
        kind: {
            "n": sum(o == kind for o in outcomes),
            "accuracy": mean(float(m > 0) for m, o in zip(margins, outcomes, strict=True) if o == kind),
        }
        for kind in ABSTENTION_OUTCOMES
    }


def answer_words(answer: str) -> int:
    """Answer length in whitespace-separated words, citation markers removed."""
    return len(strip_citations(answer).split())


def score_answer(answer: str, golds: Sequence[str], unanswerable: bool) -> dict[str, float | bool]:
    """EM, F1, contains-gold and abstention for one answer, with SQuAD 2.0 rules for unanswerable questions."""
    abstained = is_abstention(answer)
    if unanswerable:
        em = f1 = float(abstained)
        contains = False
    elif abstained:
        em = f1 = 0.0
        contains = False
    else:
        em = squad_exact_match(answer, golds)
        f1 = squad_f1(answer, golds)
        contains = contains_answer(strip_citations(answer), golds)
    return {"em": em, "f1": f1, "contains": contains, "abstained": abstained}


# ---- retrieval ----------------------------------------------------------------------------------------
def first_relevant_rank(relevant: Sequence[bool]) -> int | None:
    """1-based rank of the first relevant item in a ranking (None when no item is relevant)."""
    for i, hit in enumerate(relevant, start=1):
        if hit:
            return i
    return None


def recall_at_k(first_ranks: Sequence[int | None], k: int) -> float:
    """Fraction of queries whose gold item is in the top `k` (one gold context per query)."""
    if not first_ranks:
        return math.nan
    return sum(1 for r in first_ranks if r is not None and r <= k) / len(first_ranks)


def mean_reciprocal_rank(first_ranks: Sequence[int | None]) -> float:
    """Mean of 1/rank of the first gold item; a miss (None: not in the retrieved list) counts 0."""
    if not first_ranks:
        return math.nan
    return sum(1.0 / r for r in first_ranks if r is not None) / len(first_ranks)


# ---- aggregation --------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Iterable[float]) -> float:
    xs = list(values)
    return sum(xs) / len(xs) if xs else math.nan


def ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, NaN (reported as null) when there is nothing to divide."""
    return numerator / denominator if denominator else math.nan


def abstention_scores(abstained: Sequence[bool], unanswerable: Sequence[bool]) -> dict[str, float]:
    """Precision and recall of abstaining as a detector of unanswerable questions, plus the abstention rate."""
    true_pos = sum(1 for a, u in zip(abstained, unanswerable, strict=True) if a and u)
    return {
        "abstention_rate": ratio(sum(abstained), len(abstained)),
        "abstention_precision": ratio(true_pos, sum(abstained)),
        "abstention_recall": ratio(true_pos, sum(unanswerable)),
    }


# ---- preference pairs and head-to-head ----------------------------------------------------------------
LENGTH_BUCKETS = ("< -30", "-30..-11", "-10..-4", "-3..3", "4..10", "11..30", "> 30")


def length_bucket(diff: int) -> str:
    """Bucket of (chosen words - rejected words); symmetric so a length bias shows as a slope across buckets."""
    if diff < -30:
        return "< -30"
    if diff < -10:
        return "-30..-11"
    if diff < -3:
        return "-10..-4"
    if diff <= 3:
        return "-3..3"
    if diff <= 10:
        return "4..10"
    if diff <= 30:
        return "11..30"
    return "> 30"


def pair_metrics(
    chosen: Sequence[float],
    rejected: Sequence[float],
    chosen_words: Sequence[int],
    rejected_words: Sequence[int],
    outcomes: Sequence[str] | None = None,
) -> dict[str, object]:
    """Reward-model pair accuracy (chosen scored strictly higher), margins, and the length-bias view.

    `rm_prefers_longer_rate` vs `chosen_longer_rate` (over pairs of different length): a reward model that picks
    the longer answer much more often than the human labels did has learnt length, not quality.
    `outcomes` (per pair, `abstention_outcome`) adds `by_abstention` (`accuracy_by_abstention`).
    """
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    diffs = [c - r for c, r in zip(chosen_words, rejected_words, strict=True)]
    correct = [m > 0 for m in margins]
    buckets = []
    for label in LENGTH_BUCKETS:
        idx = [i for i, d in enumerate(diffs) if length_bucket(d) == label]
        buckets.append(
            {
                "bucket": label,
                "n": len(idx),
                "accuracy": mean(float(correct[i]) for i in idx),
                "mean_margin": mean(margins[i] for i in idx),
            }
        )
    unequal = [i for i, d in enumerate(diffs) if d != 0]
    # margin > 0 means the RM prefers chosen; it prefers the longer answer when that sign agrees with diff's.
    prefers_longer = [(margins[i] > 0) == (diffs[i] > 0) and margins[i] != 0 for i in unequal]
    return {
        "pairs": len(margins),
        "accuracy": mean(float(c) for c in correct),
        "ties": sum(1 for m in margins if m == 0),
        "mean_margin": mean(margins),
        "mean_chosen_score": mean(chosen),
        "mean_rejected_score": mean(rejected),
        "chosen_longer_rate": ratio(sum(1 for i in unequal if diffs[i] > 0), len(unequal)),
        "rm_prefers_longer_rate": ratio(sum(prefers_longer), len(unequal)),
        "by_length_diff": buckets,
        **({"by_abstention": accuracy_by_abstention(margins, outcomes)} if outcomes is not None else {}),
    }


def head_to_head(
    scores_a: Sequence[float], scores_b: Sequence[float], tol: float = 1e-6
) -> dict[str, float | int]:
    """Wins of B over A per question; ties (|diff| <= tol) count half in `win_rate_b`."""
    a = b = tie = 0
    for sa, sb in zip(scores_a, scores_b, strict=True):
        if abs(sb - sa) <= tol:
            tie += 1
        elif sb > sa:
            b += 1
        else:
            a += 1
    n = a + b + tie
    return {"a": a, "b": b, "tie": tie, "win_rate_b": ratio(2 * b + tie, 2 * n)}


# ---- confidence intervals ---------------------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_mean_ci(
    values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """The mean of `values` and its percentile-bootstrap confidence interval (`level`, seeded: reproducible).

    The questions are resampled with replacement `resamples` times; the interval is the (1-level)/2 and
    (1+level)/2 quantiles of the resampled means. NaN (reported as null) when there are no values.
    """
    import numpy as np

    xs = np.asarray(values, dtype=float)
    if xs.size == 0:
        return {"n": 0, "mean": math.nan, "ci": [math.nan, math.nan], "level": level}
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, xs.size, size=(resamples, xs.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(xs.size), "mean": float(xs.mean()), "ci": [float(lo), float(hi)], "level": level}


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Mean of a - b over the same questions (a[i] and b[i] score question i) with its paired bootstrap CI.

    Paired: a resample draws questions, and each drawn question brings both of its scores, so the large
    per-question variance that both models share cancels out of the interval of the difference.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions: {len(a)} scores against {len(b)}")
    diff = bootstrap_mean_ci(
        [x - y for x, y in zip(a, b, strict=True)], resamples=resamples, seed=seed, level=level
    )
    return {
        "n": diff["n"],
        "mean_a": mean(a),
        "mean_b": mean(b),
        "diff": diff["mean"],
        "ci": diff["ci"],
        "level": level,
    }


def paired_by_id(
    rows_a: Iterable[Mapping[str, Any]],
    rows_b: Iterable[Mapping[str, Any]],
    key: str = "f1",
    **bootstrap: Any,
) -> dict[str, Any]:
    """A - B of per-question `key` (F1) of two eval reports' examples (rows with "id" and `key`), paired by id.

    Questions only one report scored (not evaluated, or an error: `key` is null) are left out and counted.
    """
    a, b = _scores_by_id(rows_a, key, "A"), _scores_by_id(rows_b, key, "B")
    shared = [qid for qid in a if qid in b]
    return {
        **paired_bootstrap_ci([a[q] for q in shared], [b[q] for q in shared], **bootstrap),
        "key": key,
        "only_a": len(a) - len(shared),
        "only_b": len(b) - len(shared),
    }


def _scores_by_id(rows: Iterable[Mapping[str, Any]], key: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    seen: set[str] = set()
    for row in rows:
        qid = str(row["id"])
        if qid in seen:
            raise ValueError(
                f"report {name} has question id {qid!r} twice: per-question pairing needs unique ids"
            )
        seen.add(qid)
        if row.get(key) is not None:
            out[qid] = float(row[key])
    return out
