"""Training throughput: tokens/s and peak memory of SFT, reward-model and PPO steps, ours vs TRL's trainers.

Same model (the registry's v0001, SmolLM2-135M by default), same data: RAG-shaped sequences built from
squad2-dev-half (the app's prompt with 1-2 passages + a question -> a short cited answer, 330-512 tokens).

Rows (each measurement in its own fresh process; peak memory = that process's ru_maxrss):
  sft-ours   training/sft.py build_sft_trainer (AnswerOnlySFTTrainer, the default config's settings: the batch of
             B sequences in micro-batches of the default size, gradients accumulated; one optimizer step each)
  sft-trl    trl.SFTTrainer with SFTConfig's defaults, apart from what must be set to run (max_steps, batch size,
             use_cpu, report_to none, output dir); the same LoRA (r16, all linear layers)
  rm-ours    training/reward.py build_reward_trainer (LoRA SEQ_CLS, length-grouped pairs)
             Both with `model.compile: auto` as a long retrain stage runs it (training/layer_compile.py: the
             decoder layers compiled on a CPU without AVX-512 training in fp32, with a C++ compiler); the untimed
             warm-up step includes the compile (`first_step_s`)
  sft-ours-eager, rm-ours-eager
             on request: the same with model.compile=false (`summary.<stage>_compile_speedup`)
  sft-ours-sdpa, rm-ours-sdpa, ppo-ours-sdpa
             on request: the same with model.attention=sdpa (PPO: attention=sdpa) (`summary.<stage>_block_attention_speedup`: what the
             query-block attention of training/block_attention.py gains where `auto` chooses it)
  rm-trl     trl.RewardTrainer with RewardConfig's defaults (same exceptions), the same LoRA
  sft-trl-fp32, rm-trl-fp32
             the same TRL rows with bf16 off. TRL's configs default to bf16=True (and gradient checkpointing on),
             which on a CPU without native bf16 (AVX2 only) is emulated at ~1/10 the speed: the default rows
             then measure that trap, these the fair fp32 comparison (our trainers choose fp32 there)
  ppo-ours   training/ppo (one base, LoRA policy + value, adapters-off reference)
  ppo-trl112 TRL 1.12's PPOTrainer (trl.experimental.ppo) in its own venv, driven as benchmarks/ppo_vs_trl.py
             does (its leanest peft setup: LoRA policy, adapters-off reference, separate value and reward models)
A batch of B sequences: SFT B demonstrations, RM B/2 pairs (B sequences), PPO B prompts. The first step of each
run is warm-up and is not timed; `--repeats N` runs every row N times (alternating) and keeps the median.

The compute bound: the measured matmul rate of this CPU (fp32 and bf16, the model's linear-layer shapes at
4096 rows, torch's threads) and the FLOPs of one training token: forward + activation gradients of the
non-embedding weights (4 x params; LoRA's weight gradients are negligible), causal attention (3 x its forward)
and the LM head at the positions our step computes (4 x hidden x vocab per answer token; none for the RM).
Recomputation (gradient checkpointing) counts against us, not in the bound. The rate is measured once at the start
and again in each of our rows' processes right before and after its steps; `summary.<stage>_fraction_of_bound` uses
the faster of those two (the row's own conditions: this host's rate drifts by up to 40% between hours),
`<stage>_fraction_of_bound_at_start` the one from the start.

Prints a table and writes docs/results/train_throughput/<name>.json (CPU model, flags, load average per row,
and a `summary`). No assertions: timings on shared cores are noisy.

    .venv/bin/python benchmarks/train_throughput.py --quick            # a couple of minutes
    nice -n 0 .venv/bin/python benchmarks/train_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad2-dev-half" / "dev-v2.0.json"  # benchmarks may read ../shared
OUT_DIR = ROOT / "docs" / "results" / "train_throughput"
TRL112_VENV = Path("/tmp/venv-trl112")
ROWS = ("sft-ours", "sft-trl", "rm-ours", "rm-trl", "ppo-ours", "ppo-trl112")
TRL_FP32_ROWS = ("sft-trl-fp32", "rm-trl-fp32")  # on request (--rows): see the docstring
EAGER_ROWS = ("sft-ours-eager", "rm-ours-eager")  # on request: our rows with model.compile=false
SDPA_ROWS = ("sft-ours-sdpa", "rm-ours-sdpa", "ppo-ours-sdpa")  # on request: our rows with attention=sdpa
# Our rows run `model.compile: auto` as a retrain's long stage does (the benchmark's 3 steps are below
# compile_min_steps, so that threshold is lifted): the decoder layers are compiled where auto would compile them.
COMPILE_SET = {
    "": ["model.compile_min_steps=0"],
    "-eager": ["model.compile=false"],
    "-sdpa": ["model.compile_min_steps=0", "model.attention=sdpa"],
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # our default config's LoRA (dropout: PEFT's default)
PPO_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ours_row(row: str) -> tuple[str, str] | None:
    """(stage, variant) of one of our SFT/RM rows ("sft-ours-eager" -> ("sft", "-eager")), else None."""
    for stage in ("sft", "rm"):
        for variant in COMPILE_SET:
            if row == f"{stage}-ours{variant}":
                return stage, variant
    return None


# ---- data ---------------------------------------------------------------------------------------------
def rag_examples(
    squad: Path, tokenizer: Any, n: int, lo: int, hi: int, seed: int = 0
) -> list[dict[str, Any]]:
    """n answerable squad2 questions as the app prompts them: their passage (and, every other one, a passage of
    another article after it) -> "answer [1]"; kept when prompt+answer renders to lo..hi tokens."""
    from retrieval.prompt import render_prompt

    articles = json.loads(squad.read_text())["data"]
    rng = random.Random(seed)
    items = [
        (a["title"], p["context"], q)
        for a in articles
        for p in a["paragraphs"]
        for q in p["qas"]
        if not q.get("is_impossible") and q["answers"]
    ]
    rng.shuffle(items)
    contexts = [(title, ctx) for title, ctx, _ in items]
    out: list[dict[str, Any]] = []
    for i, (title, context, qa) in enumerate(items):
        passages = [{"text": context, "source": f"{title}.md"}]
        if i % 2:
            other_title, other = next(c for c in contexts[i + 1 :] + contexts if c[0] != title)
            passages.append({"text": other, "source": f"{other_title}.md"})
        prompt = render_prompt(qa["question"], passages)
        answer = [{"role": "assistant", "content": f"{qa['answers'][0]['text'].strip()} [1]"}]
        length = len(tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=False))
        if lo <= length <= hi:
            out.append({"prompt": prompt, "completion": answer, "tokens": length})
        if len(out) == n:
            break
    return out


def preference_pairs(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prompt with its own answer (chosen) and the next example's answer (rejected)."""
    return [
        {
            "prompt": ex["prompt"],
            "chosen": ex["completion"],
            "rejected": examples[(i + 1) % len(examples)]["completion"],
        }
        for i, ex in enumerate(examples)
    ]


# ---- workers (each in a fresh process) ---------------------------------------------------------------
def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _step_timer(trainer: Any) -> Any:
    """A TrainerCallback recording each optimizer step's seconds and the tokens the trainer counted in it."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[int] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self._t0, self._n0 = time.perf_counter(), trainer._total_train_tokens

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._t0)
            self.tokens.append(int(trainer._total_train_tokens - self._n0))

    timer = StepTimer()
    trainer.add_callback(timer)
    return timer


def _ours_config(stage: str, spec: dict[str, Any], variant: str = "") -> Any:
    from training.config import load_config

    section = "sft" if stage == "sft" else "reward"
    batch = spec["batch"] if stage == "sft" else spec["batch"] // 2  # the RM counts pairs
    # The step's batch as the default config runs it: micro-batches of its size, accumulated to `batch`
    micro = min(getattr(load_config(None, []), section).batch_size, batch)
    if batch % micro:
        raise SystemExit(f"--batch {spec['batch']}: not a multiple of the default {section} micro-batch")
    return load_config(
        None,
        [
            "device=cpu",
            "progress=false",
            "plots=false",
            f"{section}.batch_size={micro}",
            f"{section}.grad_accum={batch // micro}",
            f"{section}.max_steps={spec['steps']}",
            f"{section}.warmup=0",
            f"{section}.save_steps=1000000",
            f"{section}.max_length=1024",
            # --ours-set first: a variant row's own setting must win, or `--ours-set model.compile=true` turns the
            # -eager rows into compiled ones and their A/B into compiled vs compiled (it happened)
            *spec.get("ours_set", []),
            *COMPILE_SET[variant],
        ],
    )


def _trl_lora(task: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type=task,
    )


def build_trainer(row: str, spec: dict[str, Any], out: Path) -> Any:
    """The trainer of an SFT or RM row, over the spec's data."""
    from datasets import Dataset

    model_dir = Path(spec["model_dir"])
    sft_rows = [{"prompt": ex["prompt"], "completion": ex["completion"]} for ex in spec["examples"]]
    pairs = preference_pairs(spec["examples"])
    ours = ours_row(row)
    if ours is not None:
        from training.trl_stage import prepare_trainer

        stage, variant = ours
        cfg = _ours_config(stage, spec, variant)
        if stage == "sft":
            from training.data import ExportData
            from training.sft import build_sft_trainer

            data = ExportData(folder=out, snapshot_id="bench", manifest={}, sft={"train": sft_rows})
            trainer = build_sft_trainer(cfg, model_dir, data, out)
        else:
            from training.reward import build_reward_trainer

            trainer = build_reward_trainer(cfg, model_dir, pairs, out)[0]
        # as run_trainer does before training
        trainer.compile_choice, trainer.attention_choice = prepare_trainer(trainer, cfg)
        return trainer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    required = {"output_dir": str(out), "max_steps": spec["steps"], "use_cpu": True, "report_to": "none"}
    if row.endswith("-fp32"):
        required["bf16"] = False
    if row.startswith("sft-trl"):
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**required, per_device_train_batch_size=spec["batch"])
        return SFTTrainer(
            model=str(model_dir),
            args=args,
            train_dataset=Dataset.from_list(sft_rows),
            processing_class=tokenizer,
            peft_config=_trl_lora("CAUSAL_LM"),
        )
    from trl import RewardConfig, RewardTrainer

    tokenizer.pad_token = (
        "<|endoftext|>"  # SmolLM2's pad is EOS: the classifier would pool at the wrong token
    )
    args = RewardConfig(**required, per_device_train_batch_size=spec["batch"] // 2)
    return RewardTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=_trl_lora("SEQ_CLS"),
    )


def trainer_worker(row: str, spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    beside = []
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(row, spec, Path(out))
        timer = _step_timer(trainer)
        # The bound of our rows is measured right before and after their steps (the faster of the two), in the
        # process and threads that train: this host's matmul rate drifts (105 to 165 GFLOP/s on the same AVX2 CPU,
        # two hours apart), so a rate taken once at the start would score rows against another machine.
        dtype = "bfloat16" if trainer.args.bf16 else "float32"
        ours = ours_row(row) is not None
        if ours:
            beside.append(model_matmul_rates(Path(spec["model_dir"]), (dtype,))[dtype])
        trainer.train()
        if ours:
            beside.append(model_matmul_rates(Path(spec["model_dir"]), (dtype,))[dtype])
    return {
        "matmul_gflops_beside": round(max(beside), 1) if beside else None,
        "step_seconds": timer.seconds,
        "step_tokens": timer.tokens,
        # the untimed warm-up step: with a compiled model it includes the compile
        "first_step_s": round(timer.seconds[0], 1) if timer.seconds else None,
        "compile": getattr(trainer, "compile_choice", None),
        "attention": getattr(trainer, "attention_choice", None),
        "bf16": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(
            getattr(trainer.args, "activation_checkpointing", False)
            or getattr(trainer.args, "gradient_checkpointing", False)
        ),
        "micro_batch": trainer.args.per_device_train_batch_size,
        "grad_accum": trainer.args.gradient_accumulation_steps,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gb": _peak_rss_gb(),
    }


def ppo_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/ppo_vs_trl.py's worker spec for our data and sizes."""
    return {
        "policy_dir": spec["model_dir"],
        "reward_dir": spec["reward_dir"],
        "prompts": [ex["prompt"] for ex in spec["examples"]],
        "steps": spec["steps"],
        "batch": spec["batch"],
        "epochs": spec["ppo_epochs"],
        "response_length": spec["response_length"],
        "temperature": 0.7,
        "lr": 3e-5,
        "lora_r": LORA["r"],
        "lora_alpha": LORA["alpha"],
        "lora_targets": PPO_LORA_TARGETS,
        "seed": 0,
    }


def ppo_ours_worker(spec: dict[str, Any], attention: str = "auto") -> dict[str, Any]:
    """Our PPO in this process; the base's dtype and the attention as the PPO config's `auto` chooses them on this
    CPU (`attention` overrides the latter)."""
    import torch

    from benchmarks.ppo_vs_trl import ours_worker
    from model_store.hardware import choose_dtype

    bf16 = choose_dtype("auto", device="cpu").is_bf16
    result = ours_worker({**ppo_spec(spec), "bf16_weights": bf16, "attention": attention})
    return {
        "step_seconds": result["step_seconds"],
        "attention": result.get("attention"),
        "bf16": bf16,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gb": result["peak_rss_mb"] / 1024,
    }


def run_row(row: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """One measurement in a fresh process (TRL 1.12 in its venv). Returns the worker's result + load average."""
    spec_file = work / f"{row}.json"
    spec_file.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if row == "ppo-trl112":
        from benchmarks.ppo_vs_trl import TRL_WORKER

        script = work / "trl112_worker.py"
        script.write_text(TRL_WORKER)
        trl_spec = {**ppo_spec(spec), "variant": "trl-lora", "bf16_weights": False, "bf16_autocast": False}
        spec_file.write_text(json.dumps(trl_spec))
        command = [str(spec["trl112_python"]), str(script), str(spec_file)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", row, str(spec_file)]
    load_before = load_average()
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{row} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    if row == "ppo-trl112":
        result = {
            "step_seconds": result["step_seconds"],
            "bf16": False,
            "peak_rss_gb": result["peak_rss_mb"] / 1024,
        }
    timed = result["step_seconds"][1:] or result["step_seconds"]
    result["seconds_per_step"] = statistics.mean(timed)
    if "step_tokens" in result:
        tokens = result["step_tokens"][1:] or result["step_tokens"]
        result["tokens_per_s"] = sum(tokens) / sum(timed)
    else:  # PPO: the tokens of the sequences it rolls out and trains on (prompt + max response) per update
        result["tokens_per_s"] = (
            spec["batch"]
            * (spec["mean_prompt_tokens"] + spec["response_length"])
            / (result["seconds_per_step"])
        )
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    return result


# ---- the compute bound --------------------------------------------------------------------------------
def matmul_rates(
    hidden: int,
    intermediate: int,
    kv: int,
    rows: int = 4096,
    repeats: int = 5,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
) -> dict[str, float]:
    """GFLOP/s of the model's linear-layer matmuls ([rows, in] x [in, out]) per dtype, best of `repeats`."""
    import torch

    shapes = [(hidden, hidden), (hidden, kv), (hidden, intermediate), (intermediate, hidden)]
    rates = {}
    for dtype in (getattr(torch, name) for name in dtypes):
        mats = [(torch.randn(rows, i, dtype=dtype), torch.randn(i, o, dtype=dtype)) for i, o in shapes]
        flops = sum(2 * rows * i * o for i, o in shapes)
        for a, b in mats:  # warm-up
            a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for a, b in mats:
                a @ b
            best = min(best, time.perf_counter() - t0)
        rates[str(dtype).removeprefix("torch.")] = flops / best / 1e9
    return rates


def model_matmul_rates(
    model_dir: Path, dtypes: tuple[str, ...] = ("float32", "bfloat16")
) -> dict[str, float]:
    """`matmul_rates` at the shapes of the model in `model_dir` (its config only: no weights are read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    return matmul_rates(config.hidden_size, config.intermediate_size, kv, dtypes=dtypes)


def flops_per_token(config: Any, lengths: list[int], head_tokens_per_seq: float) -> dict[str, float]:
    """Training FLOPs per token: body forward + activation gradients (4 x non-embedding params), causal attention
    (3 x 2 x L x hidden per token per layer), the LM head at `head_tokens_per_seq` positions per sequence."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size
    body = 4 * layers * per_layer
    mean_len = statistics.mean(lengths)
    mean_sq = statistics.mean(n * n for n in lengths)
    attention = 3 * 2 * layers * hidden * mean_sq / mean_len
    head = 4 * hidden * config.vocab_size * head_tokens_per_seq / mean_len
    return {"non_embedding_params": layers * per_layer, "body": body, "attention": attention, "head": head}


def compute_bound(
    model_dir: Path, examples: list[dict[str, Any]], tokenizer: Any, dtype: str
) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    rates = model_matmul_rates(model_dir)
    lengths = [ex["tokens"] for ex in examples]
    answer = statistics.mean(
        len(tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=False))
        - len(
            tokenizer.apply_chat_template(
                ex["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for ex in examples
    )
    sft = flops_per_token(config, lengths, answer)
    rm = flops_per_token(config, lengths, 0)
    rate = rates[dtype] * 1e9
    return {
        "matmul_gflops": {k: round(v, 1) for k, v in rates.items()},
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype,
        "mean_tokens": statistics.mean(lengths),
        "mean_answer_tokens": answer,
        "sft_flops_per_token": {k: round(v) for k, v in sft.items()},
        "rm_flops_per_token": {k: round(v) for k, v in rm.items()},
        "sft_bound_tokens_per_s": rate / (sft["body"] + sft["attention"] + sft["head"]),
        "rm_bound_tokens_per_s": rate / (rm["body"] + rm["attention"]),
    }


# ---- the machine --------------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    from benchmarks.machine import cpu

    return {**cpu(), "cores": os.cpu_count()}


def load_average() -> list[float]:
    from benchmarks.machine import load_average as now

    return now()


def reward_model_dir(model_dir: Path, work: Path) -> Path:
    """A one-output sequence classifier on the model (fresh score head): the reward model PPO scores with."""
    from benchmarks.ppo_vs_trl import reward_model_from

    return reward_model_from(model_dir, work / "reward")


def trl112_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl, sys; sys.exit(not trl.__version__.startswith('1.12.'))"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        raise SystemExit(
            f"{venv} has no trl 1.12: python3 -m venv {venv} && {python} -m pip install torch==2.13.0 "
            "'trl==1.12.*' transformers peft accelerate datasets (the versions of this project's venv)"
        )
    return python


# ---- report -------------------------------------------------------------------------------------------
def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s, with every run's tokens/s and peak memory attached."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["tokens_per_s_runs"] = [round(r["tokens_per_s"], 1) for r in runs]
    chosen["peak_rss_gb_runs"] = [round(r["peak_rss_gb"], 2) for r in runs]
    chosen["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    if any(r.get("matmul_gflops_beside") for r in runs):
        chosen["matmul_gflops_beside_runs"] = [r.get("matmul_gflops_beside") for r in runs]
    return chosen


def summarise(rows: dict[str, dict[str, Any]], bound: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str, key: str = "tokens_per_s") -> float | None:
        return round(rows[a][key] / rows[b][key], 3) if a in rows and b in rows else None

    summary = {
        "sft_speedup_vs_trl": ratio("sft-ours", "sft-trl"),
        "rm_speedup_vs_trl": ratio("rm-ours", "rm-trl"),
        "sft_speedup_vs_trl_fp32": ratio("sft-ours", "sft-trl-fp32"),
        "rm_speedup_vs_trl_fp32": ratio("rm-ours", "rm-trl-fp32"),
        "ppo_speedup_vs_trl112": ratio("ppo-ours", "ppo-trl112"),
        "ppo_memory_ratio_vs_trl112": ratio("ppo-ours", "ppo-trl112", "peak_rss_gb"),
        "sft_compile_speedup": ratio("sft-ours", "sft-ours-eager"),
        "rm_compile_speedup": ratio("rm-ours", "rm-ours-eager"),
        "sft_block_attention_speedup": ratio("sft-ours", "sft-ours-sdpa"),
        "rm_block_attention_speedup": ratio("rm-ours", "rm-ours-sdpa"),
        "ppo_block_attention_speedup": ratio("ppo-ours", "ppo-ours-sdpa"),
        "sft_fraction_of_bound": None,
        "rm_fraction_of_bound": None,
        "sft_fraction_of_bound_at_start": None,
        "rm_fraction_of_bound_at_start": None,
        "sft_peak_mem_gb": round(rows["sft-ours"]["peak_rss_gb"], 2) if "sft-ours" in rows else None,
        "rm_peak_mem_gb": round(rows["rm-ours"]["peak_rss_gb"], 2) if "rm-ours" in rows else None,
    }
    for stage in ("sft", "rm"):
        row = rows.get(f"{stage}-ours")
        if row is None:
            continue
        at_start = row["tokens_per_s"] / bound[f"{stage}_bound_tokens_per_s"]
        summary[f"{stage}_fraction_of_bound_at_start"] = round(at_start, 3)
        # The bound scales with the matmul rate: each run against the rate measured beside it when there is one,
        # and the median of those fractions (the median run's tokens/s over ITS rate would pair one run's speed
        # with one noisy rate measurement)
        start_rate = bound["matmul_gflops"][bound["dtype"]]
        speeds = row.get("tokens_per_s_runs") or [row["tokens_per_s"]]
        rates = row.get("matmul_gflops_beside_runs") or [row.get("matmul_gflops_beside")] * len(speeds)
        fractions = [
            tps / bound[f"{stage}_bound_tokens_per_s"] * start_rate / (rate or start_rate)
            for tps, rate in zip(speeds, rates, strict=True)
        ]
        summary[f"{stage}_fraction_of_bound"] = round(statistics.median(fractions), 3)
        summary[f"{stage}_fraction_of_bound_runs"] = [round(f, 3) for f in fractions]
    return summary


def print_table(rows: dict[str, dict[str, Any]], bound: dict[str, Any]) -> None:
    print(f"\n{'row':<11} {'tokens/s':>9} {'s/step':>8} {'peak GB':>8} {'bf16':>5} {'load before':>16}")
    for row, r in rows.items():
        print(
            f"{row:<11} {r['tokens_per_s']:>9.1f} {r['seconds_per_step']:>8.2f} {r['peak_rss_gb']:>8.2f} "
            f"{str(r.get('bf16')):>5} {str(r['load_average_before']):>16}"
        )
    print(
        f"matmul GFLOP/s {bound['matmul_gflops']} ({bound['torch_threads']} threads); bound in {bound['dtype']}: "
        f"SFT {bound['sft_bound_tokens_per_s']:.0f} tokens/s, RM {bound['rm_bound_tokens_per_s']:.0f} tokens/s"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    home = Path(os.environ.get("RAGQA_HOME", ROOT / "var"))
    parser.add_argument("--model", type=Path, default=home / "models" / "v0001", help="an HF model folder")
    parser.add_argument("--squad", type=Path, default=SQUAD)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (RM: batch/2 pairs)")
    parser.add_argument(
        "--steps", type=int, default=3, help="optimizer steps per run; the first is not timed"
    )
    parser.add_argument("--min-tokens", type=int, default=330)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--ppo-batch", type=int, default=4)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per row, alternating; the median is kept"
    )
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 steps, PPO batch 2 x 16 tokens")
    parser.add_argument("--trl112-venv", type=Path, default=TRL112_VENV)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "train_throughput")
    parser.add_argument("--out", type=Path, help="JSON path (default docs/results/train_throughput/...)")
    parser.add_argument(
        "--ours-set",
        action="append",
        default=[],
        help="extra --set of our training config (e.g. sft.lr=1e-4); the -eager/-sdpa rows' own setting wins",
    )
    parser.add_argument(
        "--report-from", type=Path, help="write the report from an earlier run's WORK/runs.json (no new runs)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.ppo_batch, args.response_length = 2, 2, 2, 16
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if args.worker.startswith("ppo-ours"):
            attention = "sdpa" if args.worker.endswith("-sdpa") else "auto"
            result = ppo_ours_worker(spec, attention)
        else:
            result = trainer_worker(args.worker, spec)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"no model at {args.model}: run `ragqa setup` (it makes v0001) or pass --model DIR")
    from transformers import AutoTokenizer

    from model_store.hardware import choose_dtype

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    known = ROWS + TRL_FP32_ROWS + EAGER_ROWS + SDPA_ROWS
    unknown = sorted(set(rows) - set(known))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: choose from {', '.join(known)}")
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    examples = rag_examples(args.squad, tokenizer, max(8 * args.batch, 32), args.min_tokens, args.max_tokens)
    ppo_examples = examples[: max(16, args.ppo_batch * args.steps)]
    mean_prompt = statistics.mean(
        len(
            tokenizer.apply_chat_template(
                ex["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for ex in ppo_examples
    )
    dtype = choose_dtype("auto", device="cpu").dtype
    spec = {
        "model_dir": str(args.model.resolve()),
        "examples": examples,
        "batch": args.batch,
        "steps": args.steps,
        "ours_set": args.ours_set,
    }
    ppo = {
        **spec,
        "examples": ppo_examples,
        "batch": args.ppo_batch,
        "ppo_epochs": args.ppo_epochs,
        "response_length": args.response_length,
        "mean_prompt_tokens": mean_prompt,
    }
    if any(r.startswith("ppo") for r in rows):
        ppo["reward_dir"] = str(reward_model_dir(args.model, args.work))
    if "ppo-trl112" in rows:
        ppo["trl112_python"] = str(trl112_python(args.trl112_venv))
    saved_bound = args.report_from.parent / "bound.json" if args.report_from else None
    if saved_bound is not None and saved_bound.is_file():
        bound = json.loads(saved_bound.read_text())
    else:
        bound = compute_bound(args.model, examples, tokenizer, dtype)
        bound["load_average"] = load_average()
        (args.work / "bound.json").write_text(json.dumps(bound, indent=1))
    runs: dict[str, list[dict[str, Any]]] = {}
    if args.report_from:  # the rows an earlier (interrupted) run finished
        runs = json.loads(args.report_from.read_text())
        rows = [row for row in rows if row in runs]
    for repeat in range(0 if args.report_from else args.repeats):
        for row in rows:
            print(f"[{repeat + 1}/{args.repeats}] {row} (load {load_average()}) ...", flush=True)
            result = run_row(row, ppo if row.startswith("ppo") else spec, args.work)
            runs.setdefault(row, []).append(result)
            print(
                f"    {result['tokens_per_s']:.1f} tokens/s, {result['seconds_per_step']:.2f} s/step, "
                f"peak {result['peak_rss_gb']:.2f} GB",
                flush=True,
            )
            (args.work / "runs.json").write_text(json.dumps(runs, indent=1))  # kept if a later row fails
    results = {row: median_row(r) for row, r in runs.items()}
    print_table(results, bound)
    report = {
        "cpu": cpu_info(),
        "load_average_start_end": [runs[rows[0]][0]["load_average_before"], load_average()],
        "model": str(args.model),
        "settings": {
            "batch": args.batch,
            "steps": args.steps,
            "timed_steps": max(args.steps - 1, 1),
            "repeats": args.repeats,
            "quick": args.quick,
            "tokens_range": [args.min_tokens, args.max_tokens],
            "mean_tokens": bound["mean_tokens"],
            "lora": LORA,
            "ppo": {
                "batch": args.ppo_batch,
                "epochs": args.ppo_epochs,
                "response_length": args.response_length,
            },
            "ppo_mean_prompt_tokens": mean_prompt,
            "ppo_trl112_setup": "trl-lora (LoRA policy, adapters-off reference, full value and reward models)",
            "training_dtype_auto": dtype,
            "ours_set": args.ours_set,
        },
        "compute_bound": bound,
        "rows": results,
        "summary": summarise(results, bound),
    }
    out = args.out or OUT_DIR / ("quick.json" if args.quick else "train_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
