"""benchmarks/prompt_lookup.py's replay: its reference drafts are the backend's, and its step counts are right."""

from __future__ import annotations

import random

from app.backends.prompt_lookup import DRAFT_BY_MATCH, DraftIndex
from benchmarks.prompt_lookup import POLICIES, replay, replay_table


def _draft_by_search(policy: dict[int, int], seq: list[int], limit: int) -> list[int]:
    """The rule written as a plain search (the oracle): the longest n-gram of `policy` that ends `seq` and
    occurred before, and what followed its latest occurrence."""
    for n in sorted(policy, reverse=True):
        if len(seq) <= n:
            continue
        tail = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start : start + n] == tail:
                return seq[start + n : start + n + min(limit, policy[n])]
    return []


def test_the_index_drafts_what_a_plain_search_finds() -> None:
    rng = random.Random(0)
    for policy in (DRAFT_BY_MATCH, *POLICIES.values()):
        for _ in range(300):
            seq = [rng.randrange(6) for _ in range(rng.randrange(0, 40))]
            for limit in (0, 1, 2, 5):
                assert _draft_by_search(policy, seq, limit) == DraftIndex(seq, by_match=policy).draft(
                    limit
                ), (
                    policy,
                    seq,
                    limit,
                )


def test_replay_counts_steps_and_rows() -> None:
    prompt = [7, 1, 2, 3, 4, 5, 9]
    # The answer 1 2 3 4 5, then EOS (0). Step 1: "9 1" occurs nowhere before: 1 row, gives 2. Step 2: the 2-gram
    # "1 2" matched: guess 3 (kept), gives 4 too. Step 3: the 3-gram "2 3 4" matched: guess 5 9 1, 5 kept, 9 is
    # not EOS: EOS comes from that row. Done.
    rows = replay({2: 1, 3: 3}, prompt, [1, 2, 3, 4, 5], eos=0)
    assert rows == [1, 2, 4]
    table = replay_table(
        [{"prompt": prompt, "answer": [1, 2, 3, 4, 5]}], {1: 10.0, 2: 12.0, 4: 16.0, 8: 24.0}, 0
    )
    assert table["3-gram: 3, 2-gram: 1"]["steps_per_token"] == round(3 / 5, 3)
    assert table["3-gram: 3, 2-gram: 1"]["speedup"] == round(5 * 10.0 / (10.0 + 12.0 + 16.0), 3)
