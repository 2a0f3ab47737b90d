"""Prompt-lookup drafts for greedy decoding: the tokens that followed the latest earlier occurrence of the tail.

A grounded answer copies from its prompt: a span of a passage, a source label, or the abstention sentence the
system prompt spells out. When the last few generated tokens also occur earlier in the prompt or the answer, the
tokens that followed them there are a cheap guess of what comes next. The backend decodes the guess together
with the current token in one batch and keeps the prefix that greedy decoding confirms (the same tokens as one at
a time: each position is still the greedy choice given everything before it), so a right guess yields several
tokens for one step and a wrong one costs only the extra rows of that step. One caveat: a batched step's sums are
not bit-identical to a single step's, so where two tokens are tied to the last bits the pick can differ. With the
starter's bf16 GGUF none of 100 answers changed; with the raw v0001's bf16 GGUF 6 of 20 long (64-token) guide
answers took another token at a near-tie (logit gaps 0.004 and 0.06 where checked; bf16 resolves ~0.1 at those
logits), the same kind of difference the bf16 file already has against fp32 (78% of answers identical either way).


How far to guess: after a 3-token match, 3 tokens; after a 2-token match, 1. Chosen by replaying greedy answers
(`benchmarks/prompt_lookup.py`: the starter v0002 on the bundled guide's 20 questions and 80 questions of
squad2-dev-half's training articles; never a held-out set) against the measured cost of a decode step by its
number of rows. On a 2-core Zen 4 (bf16 GGUF) a step of 1 / 2 / 5 / 9 / 17 rows took 8.3 / 12.6 / 19.8 / 28.2 /
43.4 ms: this policy replays at 1.22x fewer decode milliseconds (measured: 1.22x, 100 of 100 answers identical),
and at 1.21x against the AVX2-only EPYC's f16 step costs. Longer guesses lose on both (8 tokens after any match:
0.99x and 0.87x), because a step's cost grows with its rows on these CPUs and most 2-token matches do not go on.
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

    def __init__(self, tokens: Iterable[int] = (), by_match: dict[int, int] | None = None) -> None:
        # n-gram length -> tokens to guess after it; another rule than DRAFT_BY_MATCH only to compare (benchmark)
        self.by_match = DRAFT_BY_MATCH if by_match is None else by_match
        self.seq: list[int] = []
        self._follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.by_match}
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
                return self.seq[start : start + min(limit, self.by_match[n])]
        return []
