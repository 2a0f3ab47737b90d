"""Our PPO loop (TRL removed its PPOTrainer in 1.13): one frozen base, LoRA policy + critic, adapter-off reference.

Each PPO step, per process:
  1. rollout: sample `batch_size` stored prompts, generate responses with the policy adapter;
  2. score: reward model (or reward_fn), reference log-probs (adapters off), old log-probs and values (the
     first update micro-batch's own forward gives these for its rows: see _ppo_update);
  3. rewards: per-token KL penalty, score on the last valid token;
  4. advantages: GAE, whitening;
  5. `ppo_epochs` x shuffled mini-batches of clipped policy + value loss, gradient accumulation and clipping;
  6. log (metrics.jsonl, progress bar);
  7. checkpoint every `checkpoint_every` steps and at the end.
Written with `accelerate`, so the same code runs on CPU, one GPU or several processes
(`accelerate launch -m training.ppo --config ...`).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model_store.reward import load_reward_model, score_with_reward_model
from training.errors import NotSupportedError
from training.ppo.actor_critic import (
    POLICY,
    VALUE,
    ActorCritic,
    build_actor_critic,
    init_value_head_from_reward,
)
from training.ppo.advantages import (
    AdaptiveKLController,
    FixedKLController,
    compute_rewards,
    explained_variance,
    gae_advantages,
    masked_mean,
    masked_whiten,
)
from training.ppo.config import PPOConfig, save_ppo_config
from training.ppo.losses import entropy_from_logits, logprobs_from_logits, policy_loss, value_loss
from training.ppo.rollout import (
    PromptError,
    RewardFn,
    Rollout,
    Sequences,
    left_pad,
    sample_responses,
    tokenize_prompts,
)
from training.ppo.selection import HeldoutScore, PolicySelector

PLOTTED = {
    "reward": "score",
    "kl": "kl",
    "response_length": "response_length",
    "value_loss": "value_loss",
    "heldout_reward": "heldout_reward",
    "heldout_kl": "heldout_kl",
}
# Held-out scoring samples with its own fixed seed (every evaluation sees the same noise) and then restores the
# training RNG, so turning selection on or off does not change the training run itself.
HELDOUT_SEED_OFFSET = 7919


@dataclass
class PPOResult:
    """What a run leaves behind. `policy_adapter_dir` loads with `PeftModel.from_pretrained(base, path)`."""

    policy_adapter_dir: Path
    value_adapter_dir: Path
    out_dir: Path
    metrics: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Scorer:
    """Scores decoded rollouts with either a reward model or a reward function."""

    reward_fn: RewardFn | None
    reward_model: Any = None
    reward_tokenizer: Any = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a dependency, but seeding must not be the reason a run fails
        pass


def _step_seed(seed: int, step: int, rank: int) -> int:
    """Every step reseeds from (seed, step, rank), so a resumed run samples exactly what an unbroken one would."""
    return (seed * 1_000_003 + step * 1_009 + rank) % 2**63


def _draw_prompts(n_prompts: int, cfg: PPOConfig, step: int, rank: int, world: int) -> list[int]:
    """This process's `batch_size` prompt indices for `step`: one global draw seeded by (seed, step), sliced by rank."""
    draw = torch.Generator().manual_seed(_step_seed(cfg.seed, step, 0))
    n_global = cfg.batch_size * world
    if n_prompts >= n_global:
        picks = torch.randperm(n_prompts, generator=draw)[:n_global]
    else:  # fewer prompts than the global batch: sample with replacement
        picks = torch.randint(n_prompts, (n_global,), generator=draw)
    return picks[rank * cfg.batch_size : (rank + 1) * cfg.batch_size].tolist()


def _generation_config(cfg: PPOConfig, tokenizer: Any, eos_ids: list[int], pad_id: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )


def _eos_ids(tokenizer: Any, model: ActorCritic) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = model.lm.get_base_model().generation_config.eos_token_id
    ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    if not ids:
        raise ValueError("the policy tokenizer has no EOS token; PPO needs one to end responses")
    return sorted(ids)


def _chunks(seqs: Sequences, chunk: int) -> list[Sequences]:
    """Consecutive row blocks of at most `chunk` rows (the micro-batch size: what fits in memory at once)."""
    rows = seqs.query_ids.shape[0]
    device = seqs.query_ids.device
    return [seqs.select(torch.arange(s, min(s + chunk, rows), device=device)) for s in range(0, rows, chunk)]


@torch.no_grad()
def _reference_logprobs(model: ActorCritic, seqs: Sequences, chunk: int, temperature: float) -> Tensor:
    """log pi_ref of the sampled tokens (adapters off), chunk by chunk. -> [B, R] fp32."""
    response_len = seqs.response_ids.shape[1]
    out = []
    for part in _chunks(seqs, chunk):
        ref = model.ref_logits(part.input_ids, part.attention_mask, response_len).float() / temperature
        out.append(logprobs_from_logits(ref, part.response_ids))
    return torch.cat(out)


@torch.no_grad()
def _policy_logprobs_and_values(
    model: ActorCritic, seqs: Sequences, chunk: int, temperature: float, with_values: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Old log-probs (policy adapter) and values (value adapter; None without `with_values`), chunk by chunk.
    -> [B, R] fp32 each."""
    response_len = seqs.response_ids.shape[1]
    logprobs, values = [], []
    for part in _chunks(seqs, chunk):
        ids, mask = part.input_ids, part.attention_mask
        logits = model.policy_logits(ids, mask, response_len).float() / temperature
        logprobs.append(logprobs_from_logits(logits, part.response_ids))
        if with_values:
            values.append(model.values(ids, mask, response_len).float())
    return torch.cat(logprobs), torch.cat(values) if with_values else None


def _score(
    scorer: _Scorer,
    tokenizer: Any,
    prompts: Sequence[list[dict]],
    query_tokens: Sequence[list[int]],
    response_ids: Tensor,
    response_mask: Tensor,
    batch_size: int,
    device: torch.device,
) -> Tensor:
    """Sequence scores [B] for the sampled responses (valid tokens only, EOS included for reward_fn)."""
    lengths = response_mask.sum(dim=1).long().tolist()
    responses = [response_ids[i, :n].cpu() for i, n in enumerate(lengths)]
    if scorer.reward_fn is not None:
        prompt_ids = [torch.tensor(t, dtype=torch.long) for t in query_tokens]
        scores = scorer.reward_fn(prompt_ids, responses)
        return torch.as_tensor(scores, dtype=torch.float32).reshape(-1).cpu()
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    return score_with_reward_model(
        scorer.reward_model, scorer.reward_tokenizer, prompts, texts, batch_size, device
    )


@dataclass(frozen=True)
class _Sampled:
    """Step 1-2 of a PPO step before the policy's own forward: responses, scores and reference log-probs."""

    seqs: Sequences
    ends_with_eos: Tensor  # [B] bool
    scores: Tensor  # [B] float
    ref_logprobs: Tensor  # [B, R] fp32


def _sample_and_score(
    model: ActorCritic,
    cfg: PPOConfig,
    scorer: _Scorer,
    tokenizer: Any,
    prompts: Sequence[list[dict]],
    query_tokens: Sequence[list[int]],
    generation_config: Any,
    eos_ids: list[int],
    pad_id: int,
    device: torch.device,
) -> _Sampled:
    """Sample one response per prompt with the policy, score it, and take the reference log-probs."""
    query_ids, query_mask = left_pad(query_tokens, pad_id)
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    response_ids, response_mask, ended = sample_responses(
        model, query_ids, query_mask, generation_config, eos_ids, pad_id
    )
    scores = _score(
        scorer, tokenizer, prompts, query_tokens, response_ids, response_mask, cfg.batch_size, device
    ).to(device)
    seqs = Sequences(query_ids, query_mask, response_ids, response_mask)
    ref_logprobs = _reference_logprobs(model, seqs, cfg.mini_batch_size // cfg.grad_accum, cfg.temperature)
    return _Sampled(seqs, ended, scores, ref_logprobs)


@dataclass(frozen=True)
class _FirstForward:
    """The update's first micro-batch forward, taken before the rollout is complete: at that moment the adapters
    are still the sampling policy's, so its detached log-probs and values ARE the old ones for those rows."""

    rows: Tensor  # [b] long, indices into the step's batch
    logprobs: Tensor  # [b, R] fp32, detached
    values: Tensor  # [b, R] fp32, detached


def _finish_rollout(
    model: ActorCritic, cfg: PPOConfig, sampled: _Sampled, kl_coef: float, first: _FirstForward | None
) -> tuple[Rollout, dict[str, float]]:
    """Steps 2-4 for the rows `first` does not cover (old log-probs and values, no gradients), then rewards and
    advantages over the whole batch: the Rollout, built once and only read afterwards."""
    seqs = sampled.seqs
    rows = seqs.query_ids.shape[0]
    logprobs = torch.empty(seqs.response_ids.shape, dtype=torch.float32, device=seqs.response_ids.device)
    values = torch.empty_like(logprobs)
    rest = torch.arange(rows, device=logprobs.device)
    if first is not None:
        logprobs[first.rows], values[first.rows] = first.logprobs, first.values
        rest = rest[~torch.isin(rest, first.rows)]
    if rest.numel():
        chunk = cfg.mini_batch_size // cfg.grad_accum
        logprobs[rest], values[rest] = _policy_logprobs_and_values(
            model, seqs.select(rest), chunk, cfg.temperature
        )
    shaped, stats = _shape_rewards(
        sampled.scores,
        sampled.ends_with_eos,
        logprobs,
        sampled.ref_logprobs,
        values,
        seqs.response_mask,
        cfg,
        kl_coef,
    )
    rollout = Rollout(
        seqs.query_ids,
        seqs.query_mask,
        seqs.response_ids,
        seqs.response_mask,
        ends_with_eos=sampled.ends_with_eos,
        scores=sampled.scores,
        logprobs=logprobs,
        ref_logprobs=sampled.ref_logprobs,
        values=values,
        **shaped,
    )
    return rollout, stats


@torch.no_grad()
def _heldout_score(
    model: ActorCritic,
    cfg: PPOConfig,
    scorer: _Scorer,
    tokenizer: Any,
    heldout: tuple[list[list[dict]], list[list[int]]],
    generation_config: Any,
    eos_ids: list[int],
    pad_id: int,
    device: torch.device,
    step: int,
) -> HeldoutScore:
    """The policy on the held-out prompts: one sampled answer each (rollout settings, fixed seed), its reward
    score, its KL to the reference summed over the answer (nats), its length."""
    prompts, query_tokens = heldout
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(cfg.seed + HELDOUT_SEED_OFFSET)
    try:
        model.eval()
        sampled = _sample_and_score(
            model, cfg, scorer, tokenizer, prompts, query_tokens, generation_config, eos_ids, pad_id, device
        )
        chunk = cfg.mini_batch_size // cfg.grad_accum
        logprobs, _ = _policy_logprobs_and_values(
            model, sampled.seqs, chunk, cfg.temperature, with_values=False
        )
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    mask = sampled.seqs.response_mask.to(logprobs.dtype)
    return HeldoutScore(
        step=step,
        reward=float(sampled.scores.float().mean()),
        kl=float(((logprobs - sampled.ref_logprobs) * mask).sum(dim=1).mean()),
        length=float(mask.sum(dim=1).mean()),
    )


def _shape_rewards(
    raw_scores: Tensor,
    ends_with_eos: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    values: Tensor,
    mask: Tensor,
    cfg: PPOConfig,
    kl_coef: float,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Steps 3-4: penalties, KL-penalised rewards, GAE and whitening. -> ({rewards, advantages, returns}, stats)."""
    scores = raw_scores.to(logprobs.device).clone()
    if cfg.missing_eos_penalty is not None:
        scores[~ends_with_eos] -= cfg.missing_eos_penalty
    if cfg.score_clip is not None:
        scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
    rewards, kl, non_score = compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    stats = {
        "score": float(raw_scores.mean()),
        "score_with_penalties": float(scores.mean()),
        "kl": float(kl.sum(dim=1).mean()),
        "non_score_reward": float(non_score.sum(dim=1).mean()),
        "rlhf_reward": float((scores + non_score.sum(dim=1)).mean()),
        "response_length": float(mask.sum(dim=1).mean()),
        "eos_fraction": float(ends_with_eos.float().mean()),
        "value_mean": float(masked_mean(values, mask)),
        "explained_variance": explained_variance(values, returns, mask),
    }
    return {"rewards": rewards, "advantages": advantages, "returns": returns}, stats


def _ppo_update(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    sampled: _Sampled,
    cfg: PPOConfig,
    generator: torch.Generator,
    kl_coef: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Steps 2-5: complete the rollout, then `ppo_epochs` passes over shuffled mini-batches, one optimizer step per
    mini-batch. -> (rollout stats, update stats).

    The first micro-batch's forward (with gradients) runs before the rollout is complete: the adapters have not
    moved yet, so its detached log-probs and values are exactly the old ones for its rows, and only the other rows
    get a separate no-gradient forward (with one micro-batch per step, e.g. batch = mini-batch, that is the policy's
    and the critic's whole rollout forward saved). Gradient checkpointing backpropagates per adapter, so there the
    rollout is completed first."""
    inner = accelerator.unwrap_model(model)
    micro = cfg.mini_batch_size // cfg.grad_accum
    response_len = sampled.seqs.response_ids.shape[1]
    params = [p for p in model.parameters() if p.requires_grad]
    rollout: Rollout | None = None
    rollout_stats: dict[str, float] = {}
    if cfg.gradient_checkpointing:
        rollout, rollout_stats = _finish_rollout(inner, cfg, sampled, kl_coef, None)
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(cfg.batch_size, generator=generator).to(sampled.seqs.query_ids.device)
        for mb_start in range(0, cfg.batch_size, cfg.mini_batch_size):
            for mc_start in range(mb_start, mb_start + cfg.mini_batch_size, micro):
                rows = order[mc_start : mc_start + micro]
                seqs = sampled.seqs.select(rows)
                with accelerator.accumulate(model):
                    if cfg.gradient_checkpointing:
                        # Recomputation during backward runs whichever adapter is active then, so each
                        # adapter's loss is backpropagated before switching (single process only).
                        logits = inner.policy_logits(seqs.input_ids, seqs.attention_mask, response_len)
                    else:
                        logits, values = model(seqs.input_ids, seqs.attention_mask, response_len)
                    logits = logits.float() / cfg.temperature
                    new_logprobs = logprobs_from_logits(logits, seqs.response_ids)
                    if rollout is None:
                        first = _FirstForward(rows, new_logprobs.detach(), values.detach().float())
                        rollout, rollout_stats = _finish_rollout(inner, cfg, sampled, kl_coef, first)
                    part = rollout.select(rows)
                    pg_loss, pg_stats = policy_loss(
                        new_logprobs, part.logprobs, part.advantages, part.response_mask, cfg.cliprange
                    )
                    if cfg.gradient_checkpointing:
                        accelerator.backward(pg_loss)
                        values = inner.values(seqs.input_ids, seqs.attention_mask, response_len)
                    vf_loss, vf_stats = value_loss(
                        values.float(), part.values, part.returns, part.response_mask, cfg.cliprange_value
                    )
                    if cfg.gradient_checkpointing:
                        inner.use_adapter(VALUE)  # recomputation must see the adapter of the forward
                        accelerator.backward(cfg.vf_coef * vf_loss)
                        inner.use_adapter(POLICY)
                    else:
                        accelerator.backward(pg_loss + cfg.vf_coef * vf_loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        sums["grad_norm"] += float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    sums["entropy"] += float(masked_mean(entropy_from_logits(logits), part.response_mask))
                sums["policy_loss"] += float(pg_loss.detach())
                sums["value_loss"] += float(vf_loss.detach())
                for key, value in {**pg_stats, **vf_stats}.items():
                    sums[key] += float(value)
                count += 1
    optimizer_steps = cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size)
    stats = {k: v / count for k, v in sums.items() if k != "grad_norm"}
    if "grad_norm" in sums:
        stats["grad_norm"] = sums["grad_norm"] / optimizer_steps
    return rollout_stats, stats


# --- checkpoints ---------------------------------------------------------------------------------------


def next_step_overruns(spent_s: float, per_step_s: float, scoring_s: float, budget_s: float) -> bool:
    """True when one more step and the held-out scoring after it (0 without selection) would end past the
    budget; `spent_s` counts from the stage's start (loading the models and scoring the start policy are part of
    the stage's time: without them a 1,699 s budget ran 1,785 s)."""
    return spent_s + per_step_s + scoring_s > budget_s


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


def _save_checkpoint(
    accelerator: Any,
    model: ActorCritic,
    optimizer: Any,
    kl_ctl: Any,
    step: int,
    out_dir: Path,
    keep: int,
    selector: PolicySelector | None = None,
) -> Path:
    """Adapters (peft folders) + exact trainable tensors + optimizer + step + kl_coef + RNG state per rank."""
    path = out_dir / "checkpoints" / f"step-{step:06d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        model.save_adapters(path / "adapters")
        torch.save(model.trainable_state(), path / "trainable.pt")
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        if selector is not None:
            selector.save(path)
    accelerator.wait_for_everyone()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    torch.save(rng, path / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / "state.json").write_text(json.dumps({"step": step, "kl_coef": kl_ctl.value}))
        for old in _checkpoint_dirs(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _load_checkpoint(accelerator: Any, model: ActorCritic, optimizer: Any, kl_ctl: Any, path: Path) -> int:
    state = json.loads((path / "state.json").read_text())
    model.load_trainable_state(load_tensors(path / "trainable.pt", accelerator.device))
    optimizer.load_state_dict(load_tensors(path / "optimizer.pt", accelerator.device))
    kl_ctl.value = float(state["kl_coef"])
    rng_file = path / f"rng_rank{accelerator.process_index}.pt"
    if rng_file.is_file():
        restore_rng(rng_file)
    return int(state["step"])


def load_tensors(path: Path, device: Any = "cpu") -> Any:
    """A checkpoint file of tensors and plain containers, never arbitrary pickled objects: weights_only=True
    refuses anything else, so a tampered checkpoint cannot run code when a run is resumed."""
    return torch.load(path, map_location=device, weights_only=True)


def restore_rng(path: Path) -> None:
    """Set torch's and Python's RNG state from a checkpoint (a tensor and a tuple of ints: weights_only loads
    both, no allow-listing needed)."""
    rng = load_tensors(path)
    torch.set_rng_state(rng["torch"])
    random.setstate(tuple(rng["python"]))


# --- metrics -------------------------------------------------------------------------------------------


def _all_agree(accelerator: Any, stop: bool) -> bool:
    """`stop` on any process = stop on every process (ranks' clocks differ; one leaving the loop alone would
    leave the others waiting in the next all-reduce)."""
    if accelerator.num_processes == 1:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=accelerator.device)
    return bool(accelerator.gather(flag).max() > 0)


def _reduce_stats(accelerator: Any, stats: dict[str, float]) -> dict[str, float]:
    """Average each scalar over processes (accelerator.gather), keys in a fixed order on every rank."""
    if accelerator.num_processes == 1:
        return stats
    keys = sorted(stats)
    local = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    gathered = accelerator.gather(local.unsqueeze(0)).double()
    return dict(zip(keys, torch.nanmean(gathered, dim=0).tolist(), strict=True))


def _write_plots(metrics: list[dict[str, float]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    written = []
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for name, key in PLOTTED.items():
        if not any(key in m for m in metrics):  # held-out curves only when selection ran
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(steps, [m.get(key, float("nan")) for m in metrics], marker="o", markersize=2)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(key)
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "plots" / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# Where a step's time goes (averaged in the summary): the rollout (sampling, scoring, reference and values)
# against the PPO epochs' updates.
STEP_TIMES = ("seconds_per_step", "rollout_seconds", "update_seconds")


def mean_of(rows: list[dict[str, float]], key: str) -> float | None:
    """The mean of `key` over the rows that have it (a run resumed from an older version's steps may lack it)."""
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else None


def _summarise(metrics: list[dict[str, float]], extra: dict[str, Any]) -> dict[str, Any]:
    if not metrics:
        return dict(extra)
    k = max(1, len(metrics) // 5)
    head, tail = metrics[:k], metrics[-k:]
    return {
        **extra,
        "steps": int(metrics[-1]["step"]),
        "score_first": mean_of(head, "score"),
        "score_last": mean_of(tail, "score"),
        "kl_last": mean_of(tail, "kl"),
        "response_length_last": mean_of(tail, "response_length"),
        "eos_fraction_last": mean_of(tail, "eos_fraction"),
        **{key: mean_of(metrics, key) for key in STEP_TIMES},
    }


# --- the entry point -----------------------------------------------------------------------------------


def run_ppo(
    cfg: PPOConfig,
    *,
    policy_dir: Path,
    prompts: list[list[dict]],
    out_dir: Path,
    reward_dir: Path | None = None,
    reward_fn: Callable[[list[Tensor], list[Tensor]], Tensor] | None = None,
    resume: bool = False,
    heldout_prompts: list[list[dict]] | None = None,
    time_budget_s: float | None = None,
) -> PPOResult:
    """Train the policy LoRA on `prompts` with PPO against a reward model (`reward_dir`) or `reward_fn`.

    policy_dir: causal LM folder (the SFT-merged model) whose weights stay frozen.
    prompts: chat conversations (lists of {"role", "content"}) rendered with add_generation_prompt=True.
    reward_fn: test/toy scorer `(prompt_ids: list[Tensor], response_ids: list[Tensor]) -> Tensor[B]`.
    resume: continue from the newest checkpoint under out_dir/checkpoints (error if there is none).
    heldout_prompts: prompts never trained on; with `select_every` > 0 the policy is scored on them and the best
        eligible one is what the run saves (training/ppo/selection.py). None = the last policy.
    time_budget_s: stop before a step that would end past this many seconds (training/time_budget.py); the
        stopping step is scored, checkpointed and recorded (`time_budget` in the summary).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    stage_started = time.monotonic()  # the budget counts loading the models and scoring the start policy too
    cfg.validate()
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    if (reward_dir is None) == (reward_fn is None):
        raise ValueError("give exactly one of reward_dir (a reward model folder) or reward_fn")
    if reward_dir is not None and cfg.reward_source == "adapter":
        raise NotSupportedError(
            "reward_source: adapter (the reward model as an adapter on the shared base) is not implemented; "
            "set reward_source: separate and pass reward_dir (a sequence-classification model folder)"
        )
    if not (policy_dir / "config.json").is_file():
        raise FileNotFoundError(f"policy folder {policy_dir} has no config.json; run SFT + merge first")
    if not prompts:
        raise PromptError("no prompts to train on; export feedback prompts first")

    # cpu=True without CUDA: accelerate then picks gloo for several CPU processes (torchrun-style launch).
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if cfg.gradient_checkpointing and world > 1:
        raise NotSupportedError(
            "gradient_checkpointing: true needs one backward per adapter, which DDP does not allow; "
            "run one process or set gradient_checkpointing: false"
        )
    _seed_everything(cfg.seed)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_ppo_config(cfg, out_dir / "ppo_config.yaml")

    from model_store.loading import load_tokenizer

    tokenizer = load_tokenizer(policy_dir)
    kept, query_tokens = tokenize_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    kept_prompts = [prompts[i] for i in kept]
    model = build_actor_critic(cfg, policy_dir, device)
    eos_ids = _eos_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    generation_config = _generation_config(cfg, tokenizer, eos_ids, pad_id)
    heldout = None
    if heldout_prompts and cfg.select_every:
        kept_heldout, heldout_tokens = tokenize_prompts(
            tokenizer, heldout_prompts[: cfg.select_prompts], cfg.max_prompt_tokens
        )
        if heldout_tokens:
            heldout = ([heldout_prompts[i] for i in kept_heldout], heldout_tokens)
    selector = PolicySelector(cfg.select_kl_limit, cfg.select_max_length_ratio) if heldout else None

    scorer = _Scorer(reward_fn=reward_fn)
    value_head_from_rm = False
    if reward_dir is not None:
        scorer.reward_model, scorer.reward_tokenizer = load_reward_model(
            reward_dir, bf16=cfg.compute_dtype(device.type).is_bf16, device=device
        )
        if getattr(scorer.reward_tokenizer, "chat_template", None) is None:
            raise PromptError(
                f"the reward tokenizer in {reward_dir} has no chat template; it must match RM training"
            )
        if cfg.init_value_head_from_reward:
            value_head_from_rm = init_value_head_from_reward(model, scorer.reward_model)

    # A fixed probe of the reference logits: they must not move during training (the base stays frozen).
    probe_ids, probe_mask = left_pad(query_tokens[:1], pad_id)
    probe = (probe_ids.to(device), probe_mask.to(device), max(1, probe_ids.shape[1] - 1))
    with torch.no_grad():
        ref_before = model.ref_logits(*probe).float()

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    model = accelerator.unwrap_model(wrapped)
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )

    start_step, metrics = 0, []
    metrics_file = out_dir / "metrics.jsonl"
    if resume:
        checkpoints = _checkpoint_dirs(out_dir)
        if not checkpoints:
            raise FileNotFoundError(f"resume=True but {out_dir}/checkpoints holds no checkpoint")
        start_step = _load_checkpoint(accelerator, model, optimizer, kl_ctl, checkpoints[-1])
        if selector is not None:
            selector.restore(checkpoints[-1], accelerator.device)
        if metrics_file.is_file():
            lines = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
            metrics = [m for m in lines if m["step"] <= start_step]
    if accelerator.is_main_process:
        metrics_file.write_text("".join(json.dumps(m) + "\n" for m in metrics))

    progress = tqdm(
        total=cfg.total_steps,
        initial=start_step,
        desc="PPO",
        disable=not (cfg.progress and accelerator.is_main_process),
    )
    last_checkpoint: Path | None = None

    scoring_s = 0.0  # how long the last held-out scoring took: the budget keeps room for the final one

    def score_heldout(step: int) -> HeldoutScore:
        nonlocal scoring_s
        began = time.monotonic()
        args = (model, cfg, scorer, tokenizer, heldout, generation_config, eos_ids, pad_id, device, step)
        score = _heldout_score(*args)
        selector.offer(score, model.trainable_state())
        scoring_s = time.monotonic() - began
        return score

    if selector is not None and start_step == 0:
        score_heldout(0)  # the starting policy: what the stage hands on if no update beats it
    budget = {"budget_s": round(time_budget_s, 1), "cut": False} if time_budget_s is not None else None
    loop_started = time.monotonic()
    for step in range(start_step + 1, cfg.total_steps + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        seed = _step_seed(cfg.seed, step, rank)
        torch.manual_seed(seed)
        # 1. rollout: this process's share of the step's prompts (same draw on every rank).
        mine = _draw_prompts(len(query_tokens), cfg, step, rank, world)
        # 2. score + reference log-probs (no gradients).
        model.eval()
        sampled = _sample_and_score(
            model,
            cfg,
            scorer,
            tokenizer,
            [kept_prompts[i] for i in mine],
            [query_tokens[i] for i in mine],
            generation_config,
            eos_ids,
            pad_id,
            device,
        )
        # Sampling, scoring and the reference; the old log-probs and values count in the update (see _ppo_update).
        rollout_seconds = time.perf_counter() - started
        # 3-5. old log-probs and values, rewards and advantages, then the PPO epochs x mini-batches.
        model.train(cfg.gradient_checkpointing)
        shuffle = torch.Generator().manual_seed(seed)
        stats, update_stats = _ppo_update(
            accelerator, wrapped, optimizer, sampled, cfg, shuffle, kl_ctl.value
        )
        stats.update(update_stats)
        stats["rollout_seconds"] = rollout_seconds
        # 6. log.
        stats = _reduce_stats(accelerator, stats)
        stats["kl_coef"] = kl_ctl.value
        kl_ctl.update(stats["kl"], cfg.batch_size * world)
        stats["seconds_per_step"] = time.perf_counter() - started
        stats["update_seconds"] = stats["seconds_per_step"] - stats["rollout_seconds"]
        # CPU seconds of this process (all threads): with wall time it shows how busy the machine was.
        stats["cpu_seconds_per_step"] = time.process_time() - cpu_started
        stats["step"] = step
        now = time.monotonic()
        last = step == cfg.total_steps
        per_step = (now - loop_started) / (step - start_step)
        if (
            budget is not None
            and not last
            and _all_agree(
                accelerator, next_step_overruns(now - stage_started, per_step, scoring_s, time_budget_s)
            )
        ):
            budget.update(cut=True, steps=step, planned_steps=cfg.total_steps)  # the next step would overrun
            last = True
        if selector is not None and (step % cfg.select_every == 0 or last):
            score = score_heldout(step)
            stats["heldout_reward"], stats["heldout_kl"] = score.reward, score.kl
            stats["heldout_length"] = score.length
        metrics.append(stats)
        if accelerator.is_main_process:
            with metrics_file.open("a") as fh:
                fh.write(json.dumps(stats) + "\n")
        progress.set_postfix(score=f"{stats['score']:.3f}", kl=f"{stats['kl']:.3f}")
        progress.update(1)
        # 7. checkpoint.
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last:
            last_checkpoint = _save_checkpoint(
                accelerator, model, optimizer, kl_ctl, step, out_dir, cfg.keep_checkpoints, selector
            )
        if last:
            break
    progress.close()

    adapters_dir = out_dir / "adapters"
    if selector is not None and selector.best_state is not None:
        model.load_trainable_state(selector.best_state)  # the best held-out policy, not necessarily the last
    accelerator.wait_for_everyone()
    model.save_adapters(adapters_dir, is_main_process=accelerator.is_main_process)
    with torch.no_grad():
        ref_change = float((model.ref_logits(*probe).float() - ref_before).abs().max())
        # Data-parallel sanity: every process must end with the same trainable weights.
        checksum = torch.stack([p.detach().double().abs().sum() for p in params]).sum().reshape(1).to(device)
        checksums = accelerator.gather(checksum)
    summary = _summarise(
        metrics,
        {
            "reference_logits_max_abs_change": ref_change,
            "processes_in_sync": bool((checksums == checksums[0]).all()),
            "prompts_total": len(prompts),
            "prompts_skipped_too_long": len(prompts) - len(kept),
            "processes": world,
            "value_head_from_reward_model": value_head_from_rm,
            "attention": model.attention,
            "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
            "heldout_prompts": len(heldout[0]) if heldout else 0,
            **({"time_budget": budget} if budget is not None else {}),
            **(selector.summary() if selector is not None else {"selected_step": None}),
        },
    )
    if accelerator.is_main_process:
        (out_dir / "metrics.json").write_text(json.dumps({"summary": summary, "steps": metrics}, indent=1))
        if cfg.plots and metrics:
            _write_plots(metrics, out_dir)
    accelerator.wait_for_everyone()
    return PPOResult(
        policy_adapter_dir=adapters_dir / "policy",
        value_adapter_dir=adapters_dir / "value",
        out_dir=out_dir,
        metrics=metrics,
        summary=summary,
    )
