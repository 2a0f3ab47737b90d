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
def build_rows(squad: dict[str, Any], *, k: int, seed: int, progress: bool = True) -> list[dict[str, Any]]:
    """Every question of `squad` (already restricted to the training articles) as a rendered SFT row."""
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
        with eval_home(cfg, dataset, embedder=embedder, index_dir=None, progress=progress) as home:
            qa = QAService(home, embedder=embedder)
            for ex in tqdm(dataset.examples, desc="starter prompts", unit="q", disable=not progress):
                passages = fit_passages(ex.question, qa.retrieve(ex.question, (), k), (), count, budget)
                answer, kind = target_answer(ex.answers, ex.unanswerable, passages)
                title = dataset.documents[ex.doc_id].title if ex.doc_id else None
                meta = {"qid": ex.qid, "kind": kind, "title": title}
                rows.append(example_row(render_prompt(ex.question, passages), answer, meta))
                shown.append((title or "", passages))
        rows += off_topic_rows(dataset.examples, dataset, shown, seed)
    random.Random(seed).shuffle(rows)
    return rows


def balance(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Unanswerable rows sampled down to UNANSWERABLE_PER_ANSWER per answered row (seeded); order kept."""
    answered = sum(r["meta"]["kind"] == "answer" for r in rows)
    unanswerable = [i for i, r in enumerate(rows) if r["meta"]["kind"] == "unanswerable"]
    keep = round(UNANSWERABLE_PER_ANSWER * answered)
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
    squad_path: Path, out: Path, *, k: int, heldout: int, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Write the starter's SFT rows (JSONL) and a summary (counts per kind, the split) beside them."""
    squad = json.loads(Path(squad_path).read_text(encoding="utf-8"))
    train_titles, heldout_titles = split_articles(squad, heldout, seed)
    rows = balance(build_rows(subset_squad(squad, train_titles), k=k, seed=seed, progress=progress), seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {
        "rows": len(rows),
        "kinds": dict(Counter(r["meta"]["kind"] for r in rows)),
        "k": k,
        "split": {"seed": seed, "heldout_articles": heldout_titles, "train_articles": train_titles},
        "source": str(squad_path),
        "licence": LICENCE,
    }
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/train_starter.py build", description=__doc__.split("\n\n")[0])
    p.add_argument("--squad", type=Path, required=True, help="a SQuAD 2.0 JSON file (squad2-dev-half)")
    p.add_argument(
        "--out", type=Path, required=True, help="the JSONL to write (a .summary.json goes beside it)"
    )
    p.add_argument("--k", type=int, default=4, help="passages per prompt (the app's default)")
    p.add_argument("--heldout-articles", type=int, default=HELDOUT_ARTICLES)
    p.add_argument("--seed", type=int, default=SPLIT_SEED)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = build(args.squad, args.out, k=args.k, heldout=args.heldout_articles, seed=args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "split"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
