"""Our PPO (training/ppo) vs the last TRL PPOTrainer (trl==1.12.0, trl.experimental.ppo) on the same setup.

Same model, prompts, batch, response length, PPO epochs, LoRA and KL settings; each trainer runs in its own
fresh process (TRL in its own venv, built on first use), and we report seconds per PPO update (the first
update is warm-up and is left out) and the process's peak RSS (ru_maxrss). Prints a table and writes
benchmarks/results/ppo_vs_trl.json. No assertions: timings on 2 shared cores are noisy (about +-20%).

    .venv/bin/python benchmarks/ppo_vs_trl.py                     # tiny random Llama
    .venv/bin/python benchmarks/ppo_vs_trl.py --model smollm2     # the default model, from its GGUF

TRL runs two ways: `trl-lora` (policy LoRA, reference = adapters off, full value + reward models: TRL's
leanest peft setup) and `trl-full` (its default: full-parameter policy, separate ref, value, reward).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

TRL_WORKER = r"""
import json, resource, sys, tempfile, time
spec = json.load(open(sys.argv[1]))
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

torch.manual_seed(spec["seed"])
tok = AutoTokenizer.from_pretrained(spec["policy_dir"], padding_side="left")
tok.pad_token = "<|endoftext|>"
ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in spec["prompts"]]
dataset = Dataset.from_dict({"input_ids": ids})
dtype = torch.bfloat16 if spec["bf16_weights"] else torch.float32
policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=dtype)
value = AutoModelForSequenceClassification.from_pretrained(spec["reward_dir"], num_labels=1, dtype=dtype)
reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_dir"], num_labels=1, dtype=dtype)
value.config.pad_token_id = reward.config.pad_token_id = tok.pad_token_id
peft_config = None
ref = None
if spec["variant"] == "trl-lora":
    peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                             target_modules=spec["lora_targets"], task_type="CAUSAL_LM")
else:
    ref = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=dtype)
out = tempfile.mkdtemp()
args = PPOConfig(
    output_dir=out, per_device_train_batch_size=spec["batch"], num_mini_batches=1,
    total_episodes=spec["batch"] * spec["steps"], num_ppo_epochs=spec["epochs"], response_length=spec["response_length"],
    local_rollout_forward_batch_size=spec["batch"], stop_token="eos", missing_eos_penalty=1.0, kl_coef=0.05,
    temperature=spec["temperature"], learning_rate=spec["lr"], num_sample_generations=0, use_cpu=True,
    bf16=spec["bf16_autocast"], report_to="none", save_strategy="no", logging_steps=1, seed=spec["seed"],
)
marks, cpu_marks = [], []
class Timer(TrainerCallback):
    def on_train_begin(self, *a, **k): marks.append(time.perf_counter()); cpu_marks.append(time.process_time())
    def on_step_end(self, *a, **k): marks.append(time.perf_counter()); cpu_marks.append(time.process_time())
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     train_dataset=dataset, value_model=value, peft_config=peft_config, callbacks=[Timer()])
trainer.train()
logs = [h for h in trainer.state.log_history if "objective/scores" in h]
print("RESULT " + json.dumps({
    "step_seconds": [b - a for a, b in zip(marks, marks[1:])],
    "step_cpu_seconds": [b - a for a, b in zip(cpu_marks, cpu_marks[1:])],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    "scores": [h["objective/scores"] for h in logs],
    "eos_tokens": [h.get("val/num_eos_tokens") for h in logs],
}))
"""


def ensure_trl_venv(venv: Path) -> Path:
    """A venv with trl==1.12.0 and our torch/transformers/peft/accelerate/datasets versions (built once)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl, sys; sys.exit(trl.__version__ != '1.12.0')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"building {venv} with trl==1.12.0 (about a minute)...", flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    pins = [
        "trl==1.12.0",
        f"torch=={md.version('torch')}",
        f"transformers=={md.version('transformers')}",
        f"peft=={md.version('peft')}",
        f"accelerate=={md.version('accelerate')}",
        f"datasets=={md.version('datasets')}",
    ]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def prepare_models(model: str, work: Path) -> tuple[Path, Path]:
    """(policy_dir, reward_dir) on disk. tiny: random 2-layer Llama; smollm2: the GGUF dequantised + a fresh RM head."""
    from training.ppo.toy import build_toy_models

    if model == "tiny":
        return build_toy_models(work / "tiny")
    policy_dir, reward_dir = work / "smollm2" / "policy", work / "smollm2" / "reward"
    if not (policy_dir / "config.json").is_file():
        from model_store.base_model import convert_gguf, default_gguf_path

        convert_gguf(default_gguf_path(), policy_dir)
    return policy_dir, reward_model_from(policy_dir, reward_dir)


def reward_model_from(model_dir: Path, out: Path) -> Path:
    """A one-output sequence classifier on the model (fresh score head), padded by the project's reward pad rule."""
    if not (out / "config.json").is_file():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from model_store.reward import use_reward_padding

        tok = use_reward_padding(AutoTokenizer.from_pretrained(str(model_dir)))
        rm = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1)
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    return out


def _cpu_seconds() -> float:
    """User + system CPU time of this process: less sensitive than wall time to other jobs on shared cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ours_worker(spec: dict) -> dict:
    """Runs inside a fresh process: our PPO with the spec's settings."""
    from training.ppo import config_from_dict, run_ppo

    cfg = config_from_dict(
        {
            "total_steps": spec["steps"],
            "batch_size": spec["batch"],
            "mini_batch_size": spec["batch"],
            "ppo_epochs": spec["epochs"],
            "max_new_tokens": spec["response_length"],
            "temperature": spec["temperature"],
            "lr": spec["lr"],
            "lora_r": spec["lora_r"],
            "lora_alpha": spec["lora_alpha"],
            "lora_targets": spec["lora_targets"],
            "bf16": spec["bf16_weights"],
            "attention": spec.get("attention", "auto"),
            "seed": spec["seed"],
            "checkpoint_every": 0,
            "plots": False,
            "progress": False,
        }
    )
    with tempfile.TemporaryDirectory() as out:
        result = run_ppo(
            cfg,
            policy_dir=Path(spec["policy_dir"]),
            reward_dir=Path(spec["reward_dir"]),
            prompts=spec["prompts"],
            out_dir=Path(out),
        )
    return {
        "step_seconds": [m["seconds_per_step"] for m in result.metrics],
        "step_cpu_seconds": [m["cpu_seconds_per_step"] for m in result.metrics],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_seconds": _cpu_seconds(),
        "scores": [m["score"] for m in result.metrics],
        "response_length": [m["response_length"] for m in result.metrics],
        "attention": result.summary.get("attention"),
    }


def run_worker(command: list[str], spec: dict, threads: int | None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    proc = subprocess.run([*command, fh.name], capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['variant']} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall_seconds"] = time.perf_counter() - started
    timed = result["step_seconds"][1:] or result["step_seconds"]
    result["seconds_per_step"] = sum(timed) / len(timed)
    cpu = result["step_cpu_seconds"][1:] or result["step_cpu_seconds"]
    result["cpu_seconds_per_step"] = sum(cpu) / len(cpu)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=4, help="PPO updates per run (the first is not timed)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per variant, alternating; the best is kept"
    )
    parser.add_argument("--variants", default="ours,trl-lora,trl-full")
    parser.add_argument(
        "--threads", type=int, help="torch threads per worker (1 is steadier on a shared machine)"
    )
    parser.add_argument("--ours-fp32", action="store_true", help="our frozen base in fp32 instead of bf16")
    parser.add_argument(
        "--venv", type=Path, default=Path(tempfile.gettempdir()) / "ppo_bench" / "venv-trl112"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ppo_bench" / "work")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ppo_vs_trl.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ours":
        print("RESULT " + json.dumps(ours_worker(json.loads(Path(args.spec).read_text()))), flush=True)
        return

    from training.ppo.toy import toy_prompts

    policy_dir, reward_dir = prepare_models(args.model, args.work)
    base_spec = {
        "policy_dir": str(policy_dir),
        "reward_dir": str(reward_dir),
        "prompts": toy_prompts(max(16, args.batch * args.steps)),
        "steps": args.steps,
        "batch": args.batch,
        "epochs": args.epochs,
        "response_length": args.response_length,
        "temperature": 0.7,
        "lr": 3e-5,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_targets": LORA_TARGETS,
        "seed": 0,
    }
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    trl_python = ensure_trl_venv(args.venv) if any(v.startswith("trl") for v in variants) else None
    trl_script = args.work / "trl_worker.py"
    trl_script.parent.mkdir(parents=True, exist_ok=True)
    trl_script.write_text(TRL_WORKER)
    results: dict[str, dict] = {}
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for variant in variants:
            if variant == "ours":
                spec = {
                    **base_spec,
                    "variant": variant,
                    "bf16_weights": not args.ours_fp32,
                    "bf16_autocast": False,
                }
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", "ours"]
            else:  # TRL in fp32 (its CPU default); bf16=True measured no faster for TRL 1.12 PPO on this CPU
                spec = {**base_spec, "variant": variant, "bf16_weights": False, "bf16_autocast": False}
                command = [str(trl_python), str(trl_script)]
            print(f"running {variant} ...", flush=True)
            result = run_worker(command, spec, args.threads)
            runs.setdefault(variant, []).append(result["seconds_per_step"])
            best = results.get(variant)
            if best is None or result["seconds_per_step"] < best["seconds_per_step"]:
                results[variant] = result
    for variant, result in results.items():
        result["seconds_per_step_all_runs"] = runs[variant]
    report = {
        "model": args.model,
        "settings": {k: v for k, v in base_spec.items() if k not in ("prompts", "policy_dir", "reward_dir")},
        "ours_base_dtype": "fp32" if args.ours_fp32 else "bf16",
        "trl_dtype": "fp32",
        "repeats": args.repeats,
        "threads": args.threads,
        "results": results,
    }
    if "ours" in results:
        ours = results["ours"]
        for variant in (v for v in results if v != "ours"):
            theirs = results[variant]
            report[f"speedup_vs_{variant}"] = theirs["seconds_per_step"] / ours["seconds_per_step"]
            report[f"cpu_speedup_vs_{variant}"] = (
                theirs["cpu_seconds_per_step"] / ours["cpu_seconds_per_step"]
            )
            report[f"memory_ratio_vs_{variant}"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    print(
        f"\nPPO, model={args.model}, batch {args.batch}, {args.response_length} new tokens, "
        f"{args.epochs} epochs, threads={args.threads or 'default'}"
    )
    print(
        f"{'variant':<10} {'s/update':>9} {'CPU s/update':>13} {'peak RSS MB':>12} "
        f"{'speedup':>8} {'CPU speedup':>12} {'mem ratio':>10}"
    )
    for variant, r in results.items():
        own = variant == "ours"
        speed = 1.0 if own else report.get(f"speedup_vs_{variant}", float("nan"))
        cpu = 1.0 if own else report.get(f"cpu_speedup_vs_{variant}", float("nan"))
        mem = 1.0 if own else report.get(f"memory_ratio_vs_{variant}", float("nan"))
        print(
            f"{variant:<10} {r['seconds_per_step']:>9.2f} {r['cpu_seconds_per_step']:>13.2f} "
            f"{r['peak_rss_mb']:>12.0f} {speed:>7.2f}x {cpu:>11.2f}x {mem:>9.2f}x"
        )
    print("speedup = their time per update / ours; mem ratio = our peak RSS / theirs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
