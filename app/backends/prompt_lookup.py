"""Prompt-lookup drafts for greedy decoding: the tokens that followed the latest earlier occurrence of the tail.

A grounded answer copies from its prompt: a span of a passage, a source label, or the abstention sentence the
system prompt spells out. When the last few generated tokens also occur earlier in the prompt or the answer, the
tokens that followed them there are a cheap guess of what comes next. The backend decodes the guess together
with the current token in one batch and keeps the prefix that greedy decoding confirms (the same tokens as one at
a time: each position is still the greedy choice given everything before it), so a right guess yields several
tokens for one step and a wrong one costs only the extra rows of that step.

How far to guess: after a 3-token match, 3 tokens; after a 2-token match, 1. Chosen with a replay of greedy answers
(the starter v0002 on the bundled guide's 20 questions and 80 squad2-dev-half training questions; never xquad-en)
against the measured cost of a decode step by its number of rows (SmolLM2-135M bf16 on a 2-core Zen 4: 1 row 9.3
ms, 2 12.4, 5 18.2, 9 24.9, 17 39.6 with a 704-token prompt; an AVX2-only EPYC's f16 steps, from its 1, 2 and 4
parallel sequences: 26, 39, 58 ms): 1.35x fewer decode milliseconds on the Zen 4's curve and 1.21x on the AVX2
curve. Longer guesses won on neither (8 tokens after any 2-token match: 1.16x and 0.83x, i.e. slower on AVX2),
because a step's cost grows with its rows on these CPUs and most 2-token matches do not continue.
"""

from __future__ import annotations

from collections.abc import Iterable

# n-gram length -> tokens to guess after a match of that length; the longest match wins.
DRAFT_BY_MATCH = {3: 3, 2: 1}
MAX_DRAFT = max(DRAFT_BY_MATCH.values())


class DraftIndex:
    """The sequence so far (prompt + answer) and, per n-gram length, where each n-gram last occurred.

    Appending is O(1) per n; `draft` is O(1). An n-gram is registered once the token after it exists, so the tail
    never matches itself.
    """

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self.seq: list[int] = []
        self._follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in DRAFT_BY_MATCH}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        end = len(self.seq)  # the position `token` takes: it follows the n-grams ending just before it
        self.seq.append(token)
        for n, follows in self._follows.items():
            if end >= n:
                follows[tuple(self.seq[end - n : end])] = end

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` guessed next tokens (none when the tail occurred nowhere before)."""
        if limit <= 0:
            return []
        for n in sorted(self._follows, reverse=True):
            if len(self.seq) < n:
                continue
            start = self._follows[n].get(tuple(self.seq[-n:]))
            if start is not None:
                return self.seq[start : start + min(limit, DRAFT_BY_MATCH[n])]
        return []
