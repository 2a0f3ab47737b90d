"""Prompt-lookup drafts (app.backends.prompt_lookup): what is guessed from where, and how much."""

from __future__ import annotations

from app.backends.prompt_lookup import DRAFT_BY_MATCH, DraftIndex


def test_a_three_token_match_guesses_what_followed_its_latest_occurrence() -> None:
    index = DraftIndex([5, 1, 2, 3, 9, 9, 9, 1, 2, 3, 7, 8, 6, 0, 1, 2, 3])
    assert (
        index.draft(10) == [7, 8, 6][: DRAFT_BY_MATCH[3]]
    )  # the latest occurrence (after 9 9 9), not the first
    assert index.draft(2) == [7, 8]  # never more than asked
    assert index.draft(0) == []


def test_a_two_token_match_guesses_less_and_the_tail_never_matches_itself() -> None:
    index = DraftIndex(
        [4, 2, 3, 8, 8, 8, 1, 2, 3]
    )  # tail 2 3: occurred after 4, as 3-gram 1 2 3 nowhere before
    assert index.draft(10) == [8][: DRAFT_BY_MATCH[2]]
    assert DraftIndex([1, 2, 3]).draft(5) == []  # only the tail itself
    assert DraftIndex([]).draft(5) == [] and DraftIndex([7]).draft(5) == []


def test_appending_moves_the_guess_along() -> None:
    index = DraftIndex([10, 11, 12, 13, 14, 15, 0, 10, 11])
    assert index.draft(3) == [12]  # 2-gram 10 11
    index.append(12)
    assert index.draft(3) == [13, 14, 15]  # 3-gram 10 11 12
    index.append(99)
    assert index.draft(3) == []
