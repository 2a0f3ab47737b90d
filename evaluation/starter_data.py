"""The starter adapter's training data: the app's own retrieval and prompt over SQuAD 2.0's training articles.

The rows are made the way the simulator makes feedback (evaluation/simulate.py): the labelled questions go through the
real retrieval (QAService.retrieve into a temporary home indexed with the app's ingest) and the prompt the model will
see (retrieval.prompt.render_prompt), and the target is what a careful user would write:
  - answerable, and a shown passage holds the gold answer: "<gold> [n]." citing that passage;
  - unanswerable (SQuAD 2.0 `is_impossible`), or retrieval missed the gold passage: the abstention sentence, because
    the passages shown do not contain the answer and the model must say so rather than guess;
  - a seeded fraction of off-topic prompts (a question shown another article's passages): the abstention.
Only the training articles of evaluation.splits are read: the held-out articles are never trained on.
training/starter.py trains the adapter on these rows (see there).

    python scripts/train_starter.py build --squad dev-v2.0.json --out starter.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.errors import EvaluationError
from evaluation.splits import HELDOUT_ARTICLES, SPLIT_SEED, split_articles, subset_squad
from retrieval.prompt import NO_ANSWER, fit_passages, render_prompt

LICENCE = "CC BY-SA 4.0 (training data: SQuAD 2.0 dev, Rajpurkar et al. 2018, the CS224N half)"
OFF_TOPIC_FRACTION = 0.06  # of all questions: enough to learn "wrong subject -> abstain", not to over-abstain
# Half of SQuAD 2.0 dev is unanswerable, and its unanswerable questions are adversarial (a passage on the very topic
# that lacks the asked fact). Kept at that rate, 60% of the targets are the abstention and the model learns to abstain
# whenever it is unsure: a first starter trained with 0.5 per answered row (43% abstention targets) abstained on 7 of
# 12 questions about the bundled guide whose answer was in the passages shown. Unanswerable rows are sampled down to
# this many per answered row (29% abstention targets in all, with off-topic rows and retrieval misses).
UNANSWERABLE_PER_ANSWER = 0.2


class StarterDataError(EvaluationError, RuntimeError):
    """The starter rows cannot be made as asked."""


# ---- targets ---------------------------------------------------------------------------------------------------
def gold_answer(answers: Sequence[str]) -> str:
    """The most frequent of the annotators' answers (the first on a tie): SQuAD dev has up to 5 per question."""
    counts = Counter(a.strip() for a in answers if a.strip())
    if not counts:
        raise StarterDataError("an answerable question without a gold answer")
    best = max(counts.values())
    return next(a.strip() for a in answers if counts.get(a.strip()) == best)


def target_answer(answers: Sequence[str], unanswerable: bool, passages: Sequence[Any]) -> tuple[str, str]:
    """(answer the model should write, kind): kind is "answer", "unanswerable" or "retrieval_miss"."""
    from evaluation.metrics import contains_answer

    if unanswerable or not answers:
        return NO_ANSWER, "unanswerable"
    gold = gold_answer(answers)
    for number, passage in enumerate(passages, start=1):
        if contains_answer(passage.text, [gold]):
            return f"{gold.rstrip('.')} [{number}].", "answer"
    return NO_ANSWER, "retrieval_miss"


def example_row(messages: list[dict[str, str]], answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    """One SFT row in TRL's conversational prompt/completion format (what training/data.py produces)."""
    return {"prompt": messages, "completion": [{"role": "assistant", "content": answer}], "meta": meta}


# ---- build -----------------------------------------------------------------------------------------------------
def build_rows(
    squad: dict[str, Any], *, k: int, seed: int, views: int = 1, progress: bool = True
) -> list[dict[str, Any]]:
    """Every question of `squad` (already restricted to the training articles) as rendered SFT rows (one per view)."""
    from tqdm.auto import tqdm

    from app.backends.base import MAX_CONTEXT_TOKENS
    from app.config import AppConfig
    from app.qa import QAService
    from evaluation.formats import load_qa
    from evaluation.runner import eval_home
    from retrieval.embedder import SentenceTransformerEmbedder

    cfg = AppConfig.load(k=k)
    with tempfile.TemporaryDirectory(prefix="ragqa-starter-") as tmp:
        path = Path(tmp) / "train.json"
        path.write_text(json.dumps(squad), encoding="utf-8")
        dataset = load_qa(path, "squad")
        embedder = SentenceTransformerEmbedder(cfg.embedder)
        count = _token_counter()
        budget = MAX_CONTEXT_TOKENS - cfg.max_new_tokens  # the app's window cap minus the answer's room
        rows: list[dict[str, Any]] = []
        shown: list[tuple[str, list[Any]]] = []
        rng = random.Random(f"views:{seed}")
        with eval_home(cfg, dataset, embedder=embedder, index_dir=None, progress=progress) as home:
            qa = QAService(home, embedder=embedder)
            for ex in tqdm(dataset.examples, desc="starter prompts", unit="q", disable=not progress):
                retrieved = fit_passages(ex.question, qa.retrieve(ex.question, (), k), (), count, budget)
                title = dataset.documents[ex.doc_id].title if ex.doc_id else None
                for view, passages in enumerate(passage_views(retrieved, views, rng)):
                    answer, kind = target_answer(ex.answers, ex.unanswerable, passages)
                    qid = ex.qid if view == 0 else f"{ex.qid}:view{view}"
                    meta = {
                        "qid": qid,
                        "kind": kind,
                        "title": title,
                        "view": view,
                        "answers": list(ex.answers),
                    }
                    rows.append(example_row(render_prompt(ex.question, passages), answer, meta))
                shown.append((title or "", retrieved))
        rows += off_topic_rows(dataset.examples, dataset, shown, seed)
    random.Random(seed).shuffle(rows)
    return rows


def passage_views(passages: Sequence[Any], views: int, rng: random.Random) -> list[list[Any]]:
    """The retrieved passages as shown (view 0), then `views - 1` other showings of the same retrieval.

    An extra view keeps the top 2 to k passages in a shuffled order: the gold passage moves, so the citation [n] the
    target carries changes with it, and fewer passages (what a user with a smaller k, or a long question, sees) can
    leave the gold out, where the target is the abstention. Same questions, more ways of being shown them: the
    training articles hold only ~2,100 answerable questions.
    """
    out = [list(passages)]
    for _ in range(views - 1):
        n = rng.randint(min(2, len(passages)), len(passages)) if passages else 0
        view = list(passages[:n])
        rng.shuffle(view)
        out.append(view)
    return out


def balance(
    rows: list[dict[str, Any]], seed: int, per_answer: float = UNANSWERABLE_PER_ANSWER
) -> list[dict[str, Any]]:
    """Unanswerable rows sampled down to `per_answer` per answered row (seeded); order kept."""
    answered = sum(r["meta"]["kind"] == "answer" for r in rows)
    unanswerable = [i for i, r in enumerate(rows) if r["meta"]["kind"] == "unanswerable"]
    keep = round(per_answer * answered)
    if len(unanswerable) <= keep:
        return rows
    dropped = set(random.Random(f"balance:{seed}").sample(unanswerable, len(unanswerable) - keep))
    return [r for i, r in enumerate(rows) if i not in dropped]


def off_topic_rows(
    examples: Sequence[Any], dataset: Any, shown: list[tuple[str, list[Any]]], seed: int
) -> list[dict[str, Any]]:
    """Questions shown the passages retrieved for a question of ANOTHER article: the answer is the abstention."""
    rng = random.Random(f"off-topic:{seed}")
    n = round(OFF_TOPIC_FRACTION * len(examples))
    rows = []
    for i in rng.sample(range(len(examples)), n):
        ex = examples[i]
        title = dataset.documents[ex.doc_id].title if ex.doc_id else None
        others = [j for j, (t, _) in enumerate(shown) if t != title]
        if not others:
            break
        passages = shown[rng.choice(others)][1]
        meta = {"qid": f"{ex.qid}:off-topic", "kind": "off_topic", "title": title}
        rows.append(example_row(render_prompt(ex.question, passages), NO_ANSWER, meta))
    return rows


def _token_counter() -> Any:
    """Prompt tokens as the default model counts them (its chat template), for fitting passages."""
    from transformers import AutoTokenizer

    from model_store.base_model import default_gguf_path

    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    def count(messages: list[dict[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return len(ids)

    return count


def build(
    squad_path: Path,
    out: Path,
    *,
    k: int,
    heldout: int,
    seed: int,
    views: int = 1,
    per_answer: float = UNANSWERABLE_PER_ANSWER,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the starter's SFT rows (JSONL) and a summary (counts per kind, the split) beside them.

    Every row before balancing goes to `<out>.all.jsonl` too: the natural mix (half of SQuAD 2.0 dev is
    unanswerable) that a validation of the trained adapter scores on.
    """
    if views < 1:
        raise StarterDataError(f"views must be at least 1 (got {views})")
    squad = json.loads(Path(squad_path).read_text(encoding="utf-8"))
    train_titles, heldout_titles = split_articles(squad, heldout, seed)
    every = build_rows(subset_squad(squad, train_titles), k=k, seed=seed, views=views, progress=progress)
    rows = balance(every, seed, per_answer)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, rows)
    write_rows(out.with_suffix(".all.jsonl"), every)
    summary = {
        "rows": len(rows),
        "kinds": dict(Counter(r["meta"]["kind"] for r in rows)),
        "k": k,
        "views": views,
        "unanswerable_per_answer": per_answer,
        "split": {"seed": seed, "heldout_articles": heldout_titles, "train_articles": train_titles},
        "source": str(squad_path),
        "licence": LICENCE,
    }
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/train_starter.py build", description=__doc__.split("\n\n")[0])
    p.add_argument("--squad", type=Path, required=True, help="a SQuAD 2.0 JSON file (squad2-dev-half)")
    p.add_argument(
        "--out", type=Path, required=True, help="the JSONL to write (a .summary.json goes beside it)"
    )
    p.add_argument("--k", type=int, default=4, help="passages per prompt (the app's default)")
    p.add_argument("--heldout-articles", type=int, default=HELDOUT_ARTICLES)
    p.add_argument("--seed", type=int, default=SPLIT_SEED)
    p.add_argument(
        "--views", type=int, default=2, help="showings of each question's passages (see passage_views)"
    )
    p.add_argument(
        "--unanswerable-per-answer",
        type=float,
        default=UNANSWERABLE_PER_ANSWER,
        help="unanswerable rows kept per answered row",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = build(
        args.squad,
        args.out,
        k=args.k,
        heldout=args.heldout_articles,
        seed=args.seed,
        views=args.views,
        per_answer=args.unanswerable_per_answer,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "split"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
