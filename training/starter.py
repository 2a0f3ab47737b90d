"""The starter adapter: grounded QA learnt from public data, so the default model answers out of the box.

The raw default model (SmolLM2-135M) writes long, often invented answers and never abstains. The starter is a LoRA
adapter trained with the same SFT stage as `ragqa retrain` (training/sft.py) on rows rendered exactly as the app renders
prompts (evaluation/starter_data.py builds them from SQuAD 2.0's training articles), so what it learns transfers to
serving. The adapter is saved in float16 (a few MB) with a card (data, split, counts, licence) for
model_store/starter_adapter/, and `ragqa setup` merges it into v0001 and publishes it as v0002 (`publish_starter`).

    python scripts/train_starter.py train --data starter.jsonl --model MODEL_DIR --out OUT [--set sft.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from training.errors import TrainingError

# On top of training/configs/default.yaml. 4-bit stays off even on CUDA: the adapter is merged into the
# full-precision base by `ragqa setup`, so it must be trained against those weights, not nf4 ones.
STARTER_SETTINGS = [
    "model.load_in_4bit=false",
    # r 16 (4.9M parameters, 9.8 MB in float16: still small enough to commit) on rows with two showings of each
    # question (`build --views 2`), 32 rows per optimizer step (batch_settings): chosen among four recipes by
    # benchmarks/starter_sweep.py on held-back questions of the training articles (SQuAD 2.0 F1 0.528 vs 0.467 for
    # the first starter's r 8, one showing, batch 16).
    "lora.r=16",
    "lora.alpha=32",
    "sft.epochs=2",
    "sft.lr=3e-4",
    "sft.max_length=1280",  # 4 passages + question + answer fit (longest rendered row ~1,100 tokens)
    "sft.gradient_checkpointing=false",
    "sft.logging_steps=10",
    "sft.save_steps=200",
    "data.test_fraction=0.05",
]


EFFECTIVE_BATCH = 32  # rows per optimizer step
CPU_MICRO_BATCH = 2  # as default.yaml's SFT micro-batches


def batch_settings(cuda: bool) -> list[str]:
    """The recipe's 32 rows per step: one micro-batch on a GPU; on a CPU micro-batches of 2 accumulated, the same
    step (the loss is normalised by the answer tokens of the whole accumulated batch). 32 rows of ~1,000 tokens in
    one micro-batch reached 24 GB resident on the 2-core, 24 GB machine and were OOM-killed."""
    micro = EFFECTIVE_BATCH if cuda else CPU_MICRO_BATCH
    # the recipe's rows run to ~1,000 tokens: its CPU micro-batch stays 2 in bf16 too (default.yaml's 4 was
    # measured on 330-512-token rows)
    return [
        f"sft.batch_size={micro}",
        f"sft.grad_accum={EFFECTIVE_BATCH // micro}",
        "sft.bf16_cpu_micro_batch=null",
    ]


class StarterError(TrainingError, RuntimeError):
    """The starter cannot be trained or published as asked."""


# ---- train -----------------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise StarterError(f"{path} holds no rows: run `scripts/train_starter.py build` first")
    return rows


def is_test_qid(qid: str, test_fraction: float) -> bool:
    """Whether a question is held back from training: by a hash of its id, so its off-topic copy and its other
    showings (`<qid>:off-topic`, `<qid>:view1`) go with it, and every data variant holds back the same questions."""
    import hashlib

    base = str(qid).split(":")[0]
    return int(hashlib.sha256(base.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < test_fraction


def split_rows(rows: list[dict[str, Any]], test_fraction: float) -> dict[str, list[dict[str, Any]]]:
    """Train/test by question (see is_test_qid), without the meta column."""
    test = [is_test_qid(r["meta"]["qid"], test_fraction) for r in rows]
    plain = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    return {
        "train": [p for p, t in zip(plain, test, strict=True) if not t],
        "test": [p for p, t in zip(plain, test, strict=True) if t],
    }


def train(data: Path, model_dir: Path, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """SFT the starter with the retrain's SFT stage; save the adapter in float16 with its card."""
    import torch

    from training.config import load_config
    from training.data import ExportData
    from training.sft import train_sft

    cfg = load_config(None, STARTER_SETTINGS + batch_settings(torch.cuda.is_available()) + list(overrides))
    rows = read_rows(data)
    splits = split_rows(rows, cfg.data.test_fraction)
    export = ExportData(folder=Path(data).parent, snapshot_id="starter", manifest={}, sft=splits)
    result = train_sft(cfg, model_dir=model_dir, data=export, out_dir=out_dir / "sft")
    if result.status != "done":
        raise StarterError(f"SFT did not run: {result.reason}")
    adapter = out_dir / "adapter"
    save_half(Path(result.outputs["adapter"]), adapter)
    card = {
        "kind": "starter",
        "trained_with": "training/starter.py (the retrain's SFT stage)",
        "rows": {"train": len(splits["train"]), "test": len(splits["test"])},
        "kinds": dict(Counter(r["meta"]["kind"] for r in rows)),
        "config": {"lora": vars(cfg.lora), "sft": vars(cfg.sft)},
        "metrics": result.metrics,
        "base": base_identity(Path(model_dir)),
        "trained_on": trained_on(),
    }
    summary = Path(data).with_suffix(".summary.json")
    if summary.is_file():  # written by the build: the data's source, split, counts and licence
        card["data"] = json.loads(summary.read_text(encoding="utf-8"))
        card["licence"] = card["data"].get("licence")
    (adapter / "starter.json").write_text(json.dumps(card, indent=1, default=str) + "\n", encoding="utf-8")
    return card


def base_identity(model_dir: Path) -> dict[str, Any]:
    """The weights the adapter was trained on: it fits only them (model_store.starter.unfit_reason checks)."""
    from model_store.files import sha256_file

    manifest = model_dir / "manifest.json"
    weights = model_dir / "model.safetensors"
    return {
        "gguf_sha256": json.loads(manifest.read_text(encoding="utf-8")).get("gguf_sha256")
        if manifest.is_file()
        else None,
        "safetensors_sha256": sha256_file(weights) if weights.is_file() else None,
    }


def trained_on() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {
        "device": f"{device}, torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    }


def save_half(src: Path, dst: Path) -> None:
    """Copy a PEFT adapter folder with its weights in float16: half the size, a merge error far below the gate's."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "adapter_config.json", dst / "adapter_config.json")
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in weights.items()},
        str(dst / "adapter_model.safetensors"),
    )


# ---- publish (ragqa setup) --------------------------------------------------------------------------------------
# Conversations on which the merged model's logits are checked against base + adapter (any grounded-QA prompt does).
_CHECK_PASSAGES = [
    {"text": "The Rhine is a river that flows from the Swiss Alps to the North Sea.", "source": "rivers.md"},
    {"text": "Run `ragqa ingest PATH` to add a folder of documents to the index.", "source": "guide.md"},
]


def check_conversations() -> list[list[dict[str, str]]]:
    from retrieval.prompt import render_prompt

    return [
        render_prompt("Where does the Rhine flow to?", _CHECK_PASSAGES)
        + [{"role": "assistant", "content": "the North Sea [1]."}],
        render_prompt("What is the capital of Peru?", _CHECK_PASSAGES[:1]),
    ]


def starter_due(registry: Any, adapter: Path | None = None) -> tuple[bool, str]:
    """Whether publish_starter would publish (no starter yet, or a newer shipped adapter while the previous starter is
    what is served), and why not when it would not."""
    from model_store.files import sha256_file
    from model_store.starter import STARTER_DIR, starter_version

    existing = starter_version(registry)
    if existing is None:
        return True, "no starter published yet"
    weights = Path(adapter or STARTER_DIR) / "adapter_model.safetensors"
    if not weights.is_file():  # a broken install: the published starter keeps serving
        return False, f"starter already published as {existing.name} (the shipped adapter is missing)"
    shipped = sha256_file(weights)
    if (existing.manifest.get("lineage") or {}).get("adapter_sha256") == shipped:
        return False, f"starter already published as {existing.name}"
    if registry.current_name() != existing.name:
        return False, (
            f"starter already published as {existing.name} (a newer one is shipped; it replaces the starter only "
            "while that is served)"
        )
    return True, f"a newer starter is shipped than {existing.name}"


def publish_starter(
    registry: Any, *, extras: Any = None, adapter: Path | None = None
) -> tuple[Any | None, str]:
    """Merge the shipped starter adapter into the registry's base and publish it as the current version.

    Returns (the version or None, what happened). Publishes each shipped adapter once: an existing starter version
    is left as it is (also when the user rolled back to the raw model: setup never undoes a rollback). A newer
    adapter (an upgraded package) is published as a new version only while the previous starter is what is served:
    a retrain on top of it or a rollback is the user's choice and stays; the previous starter stays for rollback.
    """
    from model_store.files import sha256_file
    from model_store.starter import STARTER_DIR, STARTER_KIND, starter_card, starter_version, unfit_reason
    from training.merge import merge_adapter

    folder = Path(adapter or STARTER_DIR)
    existing = starter_version(registry)
    due, note = starter_due(registry, folder)
    if not due:
        return existing, note
    base = registry.base()
    if base is None:
        raise StarterError("the registry is empty: the base model must be imported first")
    card = starter_card(folder)
    reason = unfit_reason(base.manifest, card)
    if reason:
        return None, reason
    merge_info: dict[str, Any] = {}

    def write(out: Path) -> None:
        merge_info.update(
            merge_adapter(base.path, folder, out, check_conversations=check_conversations(), atol=1e-3)
        )

    manifest = {
        "kind": STARTER_KIND,
        "stage": "starter",
        "parent": base.name,
        "base_model": base.manifest.get("base_model"),
        "lineage": {
            "base": base.name,
            "adapter": "model_store/starter_adapter",
            "adapter_sha256": sha256_file(folder / "adapter_model.safetensors"),
            "trained_with": card.get("trained_with"),
            "data": {k: card.get("data", {}).get(k) for k in ("source", "rows", "kinds", "split")},
        },
        "licence": card.get("licence"),
    }

    def extras_with_merge(out: Path) -> dict[str, Any]:
        return {"merge": dict(merge_info), **(extras(out) if extras is not None else {})}

    if existing is not None:
        manifest["replaces"] = existing.name
    version = registry.publish(write, manifest, extras=extras_with_merge)
    after = f"; the previous starter {existing.name} stays for rollback" if existing is not None else ""
    return version, f"starter published as {version.name} (base {base.name} + the grounded-QA adapter){after}"


# ---- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/train_starter.py train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="rows from `scripts/train_starter.py build`")
    p.add_argument("--model", type=Path, required=True, help="the base model folder (the registry's v0001)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    card = train(args.data, args.model, args.out, args.overrides)
    print(json.dumps(card["metrics"], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
