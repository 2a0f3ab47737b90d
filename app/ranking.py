"""What a rater's choice means as a ranking: labels (A, B, ...) -> groups of candidate ids, best first."""

from __future__ import annotations

import re

from app.errors import AppError

TWO_WAY_CHOICES = ("A is better", "B is better", "Tie", "Both bad")


class RankingError(AppError, ValueError):
    """The ranking cannot be understood; the message shows the expected form."""


def parse_order(text: str, labels: list[str]) -> list[list[str]]:
    """Parse "B > A = C > D" into [["B"], ["A", "C"], ["D"]]; every shown label must appear exactly once."""
    if not text or not text.strip():
        raise RankingError(f"enter an order such as {' > '.join(labels)} (use = for a tie)")
    groups = []
    for part in text.upper().split(">"):
        group = [g for g in re.split(r"[=,\s]+", part.strip()) if g]
        if not group:
            raise RankingError(f"empty place in {text!r}: write e.g. {' > '.join(labels)}")
        groups.append(group)
    flat = [g for grp in groups for g in grp]
    unknown = sorted(set(flat) - set(labels))
    if unknown:
        raise RankingError(
            f"unknown candidate(s) {', '.join(unknown)}; the candidates are {', '.join(labels)}"
        )
    repeated = sorted({g for g in flat if flat.count(g) > 1})
    if repeated:
        raise RankingError(f"candidate(s) {', '.join(repeated)} appear more than once")
    missing = [label for label in labels if label not in flat]
    if missing:
        raise RankingError(f"rank every candidate: {', '.join(missing)} missing")
    return groups


def two_way(choice: str) -> tuple[list[list[str]], bool]:
    """The four buttons for two candidates -> (groups, both_bad)."""
    if choice == "A is better":
        return [["A"], ["B"]], False
    if choice == "B is better":
        return [["B"], ["A"]], False
    if choice == "Tie":
        return [["A", "B"]], False
    if choice == "Both bad":
        return [], True
    raise RankingError(f"choose one of: {', '.join(TWO_WAY_CHOICES)}")
