"""Stage 6, the evaluation gate: the candidate model against the current one on held-out prompts.

Measured on the snapshot's test-split prompts (the same chat format serving uses):
  - mean reward-model score of each model's answers, and the RM win-rate of candidate over current
    (per prompt 1 if the candidate's answer scores higher, 0.5 on a tie, else 0);
  - KL(candidate || current), exact over the vocabulary at every answer token, summed per answer and
    averaged over the candidate's own answers (`kl`), plus the per-token mean (`kl_per_token`);
  - mean answer length in tokens (up to and including EOS);
  - with `gate.qa_file` (JSONL {"question", "answers": [...], "context"}): SQuAD EM/F1 of both models
    (evaluation.metrics, the same metric as `ragqa eval`: official normalisation, citation markers removed,
    max over gold answers).
`gate_decision` then applies the configured thresholds: publish only if each set criterion holds, or when
forced, recording every criterion's value, threshold and outcome.

`python -m training.evaluate --config FILE --candidate DIR [--current DIR] [--reward-model DIR]
[--data EXPORT] [--out DIR]` runs it alone (current defaults to the registry's current version).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from evaluation.metrics import squad_exact_match, squad_f1
from training.config import GateSection, TrainConfig

Messages = list[dict[str, str]]


def load_qa_file(path: Path, limit: int) -> list[dict[str, Any]]:
    """Rows {"question", "answers", "context"} with at least one gold answer (unanswerable rows skipped)."""
    from training.data import TrainingDataError, read_jsonl

    if not Path(path).is_file():
        raise TrainingDataError(f"gate.qa_file {path} does not exist")
    rows = []
    for i, row in enumerate(read_jsonl(Path(path)), start=1):
        answers = row.get("answers")
        if not isinstance(row.get("question"), str) or not isinstance(answers, list):
            raise TrainingDataError(f'{path}:{i} needs "question" (string) and "answers" (list)')
        if answers:
            rows.append(
                {
                    "question": row["question"],
                    "answers": [str(a) for a in answers],
                    "context": str(row.get("context", "")),
                }
            )
    return rows[:limit]


# ---- generation, scoring, KL ------------------------------------------------------------------------------
def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = model.generation_config.eos_token_id
    ids |= set(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    return sorted(ids)


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[Messages], gate: GateSection, seed: int
) -> list[dict[str, Any]]:
    """Answer each prompt. -> [{"prompt_ids": [Q], "response_ids": [R] up to and incl. EOS, "text"}]."""
    import torch
    from transformers import GenerationConfig

    from training.ppo.rollout import left_pad

    eos = _eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(
        max_new_tokens=gate.max_new_tokens,
        do_sample=gate.do_sample,
        temperature=gate.temperature if gate.do_sample else None,
        top_p=None,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    device = next(model.parameters()).device
    encoded = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
        for p in prompts
    ]
    out: list[dict[str, Any]] = []
    torch.manual_seed(seed)
    model.eval()
    for start in range(0, len(encoded), gate.batch_size):
        chunk = [list(x) for x in encoded[start : start + gate.batch_size]]
        ids, mask = left_pad(chunk, pad)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
        for prompt_ids, row in zip(chunk, gen[:, ids.shape[1] :].tolist(), strict=True):
            response = []
            for tok in row:
                response.append(tok)
                if tok in eos:
                    break
            out.append(
                {
                    "prompt_ids": prompt_ids,
                    "response_ids": response,
                    "text": tokenizer.decode(response, skip_special_tokens=True).strip(),
                }
            )
    return out


def answer_kl(policy: Any, reference: Any, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Exact KL(policy || reference) summed over the R answer tokens of one sample (nats).

    One unpadded forward per model on [1, Q + R]; logits at positions Q-1 .. Q+R-2 predict the answer:
    KL_t = sum_v p(v) (log p(v) - log q(v)) over the vocabulary, [R] -> summed.
    """
    import torch

    if not response_ids:
        return 0.0
    ids = torch.tensor([prompt_ids + response_ids], dtype=torch.long)
    q, r = len(prompt_ids), len(response_ids)
    with torch.no_grad():
        logp = torch.log_softmax(
            policy(input_ids=ids.to(policy.device)).logits[0, q - 1 : q + r - 1].float(), -1
        )
        logq = torch.log_softmax(
            reference(input_ids=ids.to(reference.device)).logits[0, q - 1 : q + r - 1].float(), -1
        )
    return float((logp.exp() * (logp - logq.to(logp.device))).sum())


def win_rate(candidate: list[float], current: list[float], tie: float = 1e-6) -> float:
    """Share of prompts where the candidate's score beats the current's; ties (|diff| <= tie) count half."""
    wins = [
        1.0 if a - b > tie else 0.5 if abs(a - b) <= tie else 0.0
        for a, b in zip(candidate, current, strict=True)
    ]
    return sum(wins) / len(wins) if wins else float("nan")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_candidate(
    cfg: TrainConfig,
    *,
    candidate_dir: Path,
    current_dir: Path,
    reward_dir: Path | None,
    prompts: list[Messages],
    out_dir: Path,
) -> dict[str, Any]:
    """Measure candidate vs current (see the module docstring). Writes samples.jsonl and metrics.json."""
    import torch

    from model_store.loading import load_causal_lm, load_tokenizer
    from model_store.reward import load_reward_model, score_with_reward_model
    from retrieval.prompt import render_prompt
    from training.data import TrainingDataError

    gate = cfg.gate
    prompts = prompts[: gate.num_prompts]
    if not prompts:
        raise TrainingDataError("the gate has no held-out prompts to evaluate on; collect more feedback")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cpu"  # evaluation is small; the same numbers on every machine
    models = {
        "candidate": load_causal_lm(candidate_dir, dtype=torch.float32, device=device),
        "current": load_causal_lm(current_dir, dtype=torch.float32, device=device),
    }
    tokenizer = load_tokenizer(candidate_dir)
    answers = {name: generate_answers(m, tokenizer, prompts, gate, cfg.seed) for name, m in models.items()}
    per_model: dict[str, dict[str, Any]] = {}
    for name, rows in answers.items():
        per_model[name] = {"mean_length": _mean([float(len(r["response_ids"])) for r in rows])}
    kls = [
        answer_kl(models["candidate"], models["current"], r["prompt_ids"], r["response_ids"])
        for r in answers["candidate"]
    ]
    tokens = sum(len(r["response_ids"]) for r in answers["candidate"])
    metrics: dict[str, Any] = {
        "prompts": len(prompts),
        "kl": _mean(kls),
        "kl_per_token": sum(kls) / tokens if tokens else 0.0,
        "win_rate": None,
        "reward_delta": None,
        "reward_model": str(reward_dir) if reward_dir else None,
    }
    scores: dict[str, list[float]] = {}
    if reward_dir is not None:
        rm, rm_tok = load_reward_model(Path(reward_dir), bf16=False, device=torch.device(device))
        for name, rows in answers.items():
            texts = [r["text"] for r in rows]
            scores[name] = score_with_reward_model(
                rm, rm_tok, prompts, texts, gate.batch_size, torch.device(device)
            ).tolist()
            per_model[name]["mean_reward"] = _mean(scores[name])
        metrics["win_rate"] = win_rate(scores["candidate"], scores["current"])
        metrics["reward_delta"] = per_model["candidate"]["mean_reward"] - per_model["current"]["mean_reward"]
        del rm
    if gate.qa_file:
        qa = load_qa_file(Path(gate.qa_file), gate.qa_limit)
        qa_prompts = [
            render_prompt(row["question"], [{"text": row["context"], "source": "context"}]) for row in qa
        ]
        for name, model in models.items():
            got = generate_answers(model, tokenizer, qa_prompts, gate, cfg.seed)
            per_model[name]["em"] = _mean(
                [squad_exact_match(g["text"], row["answers"]) for g, row in zip(got, qa, strict=True)]
            )
            per_model[name]["f1"] = _mean(
                [squad_f1(g["text"], row["answers"]) for g, row in zip(got, qa, strict=True)]
            )
        metrics["qa_examples"] = len(qa)
        metrics["f1_delta"] = (per_model["candidate"]["f1"] or 0.0) - (per_model["current"]["f1"] or 0.0)
    metrics["candidate"], metrics["current"] = per_model["candidate"], per_model["current"]
    with (out_dir / "samples.jsonl").open("w") as fh:
        for i, prompt in enumerate(prompts):
            row = {
                "question": prompt[-1]["content"][-300:],
                "candidate": answers["candidate"][i]["text"],
                "current": answers["current"][i]["text"],
                "kl": kls[i],
            }
            if scores:
                row["candidate_reward"], row["current_reward"] = scores["candidate"][i], scores["current"][i]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


# ---- the decision -----------------------------------------------------------------------------------------
def gate_decision(metrics: dict[str, Any], gate: GateSection, *, force: bool = False) -> dict[str, Any]:
    """Apply the thresholds. -> {"passed", "publish", "forced", "criteria": [...], "reasons": [...]}.

    A criterion whose metric was not measured (no reward model, no QA file) fails: the gate never passes
    on numbers it did not see.
    """
    checks = [
        ("win_rate", ">=", gate.min_win_rate),
        ("kl", "<=", gate.max_kl),
        ("reward_delta", ">=", gate.min_reward_delta),
        ("f1_delta", ">=", gate.min_f1_delta),
    ]
    criteria, reasons = [], []
    for key, op, threshold in checks:
        if threshold is None:
            continue
        value = metrics.get(key)
        if value is None or value != value:  # None or NaN
            ok, why = (
                False,
                f"{key} not measured ({'no reward model' if key in ('win_rate', 'reward_delta') else 'no qa_file'})",
            )
        else:
            ok = value >= threshold if op == ">=" else value <= threshold
            why = f"{key} {value:.4g} {op if ok else ('<' if op == '>=' else '>')} {threshold:g}"
        criteria.append({"metric": key, "op": op, "threshold": threshold, "value": value, "ok": ok})
        reasons.append(("ok: " if ok else "FAILED: ") + why)
    passed = all(c["ok"] for c in criteria)
    if not criteria:
        reasons.append("no gate criteria configured")
    decision = {
        "passed": passed,
        "forced": force and not passed,
        "publish": passed or force,
        "criteria": criteria,
    }
    if decision["forced"]:
        reasons.append("published anyway: --force")
    decision["reasons"] = reasons
    return decision


def main(argv: list[str] | None = None) -> int:
    from model_store.loading import ModelLoadError
    from model_store.registry import ModelRegistry, RegistryError
    from settings.paths import Paths
    from training.config import ConfigError, load_config
    from training.data import TrainingDataError, load_export

    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description="Candidate vs current gate."
    )
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--current", type=Path, default=None, help="default: the registry's current version")
    parser.add_argument("--reward-model", type=Path, default=None)
    parser.add_argument(
        "--data", type=Path, default=None, help="feedback export folder (default data.export_dir)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        export = args.data or (Path(cfg.data.export_dir) if cfg.data.export_dir else None)
        if export is None:
            raise ConfigError("give --data EXPORT_DIR or set data.export_dir")
        data = load_export(export)
        paths = Paths.from_env()
        current = args.current
        if current is None:
            version = ModelRegistry(paths.models_dir).current()
            if version is None:
                raise RegistryError("the registry has no current model; pass --current DIR")
            current = version.path
        prompts, _source = data.eval_prompts()
        out = args.out or paths.runs_dir / "evaluate"
        metrics = evaluate_candidate(
            cfg,
            candidate_dir=args.candidate,
            current_dir=current,
            reward_dir=args.reward_model,
            prompts=prompts,
            out_dir=out,
        )
    except (ConfigError, TrainingDataError, ModelLoadError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    decision = gate_decision(metrics, cfg.gate, force=args.force)
    print(json.dumps({"metrics": metrics, "gate": decision}, indent=1))
    return 0 if decision["publish"] else 3


if __name__ == "__main__":
    sys.exit(main())
