"""What the machine in front of the program can do, and the compute dtype that follows from it.

One function, `choose_dtype`, decides the precision for serving (the transformers backend), every training stage
(SFT, reward model, DPO, PPO rollouts and updates) and evaluation, so that a default tuned on one CPU never turns
pathological on another. The rule:
  - CUDA: bfloat16 when the GPU supports it, else float32;
  - CPU: bfloat16 only with native bf16 instructions (AMX `amx_bf16` or AVX-512 `avx512_bf16` in the CPU flags),
    else float32. Without them bf16 is emulated: on a 2-core AVX2-only EPYC a batched bf16 generate of 16
    answers took ~3.5 min against ~35 s in fp32. With them bf16 wins (Zen 4: a 900-token prefill 1.04 s bf16 vs
    1.85 s fp32; Sapphire Rapids AMX: batched forwards ~3.6x faster).
  - an explicit setting ("bfloat16" / "float32", or true / false) always wins; the reason says so.
torch.ops.mkldnn._is_mkldnn_bf16_supported() is not the test: it is true on any AVX-512 core CPU, where bf16 is
converted in software rather than computed natively.

Nothing here imports torch unless the caller leaves the device to be detected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# The flags `ragqa doctor` reports: the ones that decide precision and llama.cpp's kernels.
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
PRECISIONS = ("auto", "bfloat16", "float32")
_ALIASES = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "true": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "false": "float32",
}


class PrecisionError(ValueError):
    """A precision setting that is not auto, bfloat16 or float32."""


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> tuple[str, ...]:
        """The native-bf16 flags this CPU has (empty: bf16 would be emulated)."""
        return tuple(f for f in NATIVE_BF16_FLAGS if f in self.flags)

    @property
    def relevant_flags(self) -> list[str]:
        return [f for f in RELEVANT_FLAGS if f in self.flags]


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # "bfloat16" | "float32"
    device: str  # "cpu" | "cuda"
    reason: str

    @property
    def is_bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def to_json(self) -> dict[str, str]:
        return {"dtype": self.dtype, "device": self.device, "reason": self.reason}


def parse_cpuinfo(text: str) -> CpuInfo:
    """The model name and flags of the first processor in a /proc/cpuinfo text."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 | arm
            flags = frozenset(value.split())
        if model and flags:
            break
    return CpuInfo(model or "unknown", flags)


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:  # not Linux: no flags known, so no native bf16 is assumed
        import platform

        return CpuInfo(platform.processor() or "unknown", frozenset())


def parse_precision(value: Any) -> str:
    """`auto`, `bfloat16` or `float32` from a config value (true/false and bf16/fp32 are accepted too)."""
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise PrecisionError(f"precision must be auto, bfloat16 or float32 (or true/false), got {value!r}")
    return _ALIASES[key]


def cuda_state() -> tuple[bool, bool]:
    """(CUDA available, CUDA supports bf16); imports torch."""
    import torch

    if not torch.cuda.is_available():
        return False, False
    return True, bool(torch.cuda.is_bf16_supported())


def choose_dtype(
    requested: Any = "auto",
    *,
    device: str | None = None,
    cpu: CpuInfo | None = None,
    cuda_bf16: bool | None = None,
) -> DtypeChoice:
    """The compute dtype for `device` ("cpu" | "cuda"; None = CUDA when available) and why.

    `cpu` and `cuda_bf16` default to this machine's facts; tests pass fakes.
    """
    wanted = parse_precision(requested)
    if device is None or (device == "cuda" and cuda_bf16 is None):
        available, bf16_ok = cuda_state()
        device = device or ("cuda" if available else "cpu")
        cuda_bf16 = bf16_ok if cuda_bf16 is None else cuda_bf16
    if wanted != "auto":
        emulated = wanted == "bfloat16" and device == "cpu" and not (cpu or read_cpuinfo()).native_bf16
        note = ": emulated on this CPU (no amx_bf16/avx512_bf16), expect ~10x slower" if emulated else ""
        return DtypeChoice(wanted, device, f"configured ({requested!r}){note}")
    if device == "cuda":
        if cuda_bf16:
            return DtypeChoice("bfloat16", device, "CUDA GPU with bf16 support")
        return DtypeChoice("float32", device, "CUDA GPU without bf16 support")
    cpu = cpu or read_cpuinfo()
    native = cpu.native_bf16
    if native:
        return DtypeChoice("bfloat16", device, f"CPU has native bf16 ({', '.join(native)})")
    return DtypeChoice(
        "float32", device, "CPU lacks amx_bf16 and avx512_bf16: bf16 would be emulated (~10x slower)"
    )


# ---- cores ----------------------------------------------------------------------------------------------
def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (cgroup v2 cpu.max, else v1 cfs quota/period); None = no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (taskset, cpuset), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def usable_cores(affinity: int | None = None, quota: float | None = None, *, read_quota: bool = True) -> int:
    """Cores a compute job can really get: the affinity set, capped by the cgroup quota (rounded down, >= 1).

    A container limited to 2 CPUs on a 64-core host sees 64 in os.cpu_count(); 64 threads there would fight
    over 2 CPUs' worth of time.
    """
    cores = affinity if affinity is not None else affinity_cores()
    if quota is None and read_quota:
        quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def compute_threads() -> int:
    """Threads for a native compute library (llama.cpp): the usable cores, capped by OMP_NUM_THREADS when set
    (the standard knob, which `ragqa retrain` / `ragqa eval` set to their CPU share)."""
    cores = usable_cores()
    try:
        return max(1, min(cores, int(os.environ["OMP_NUM_THREADS"])))
    except (KeyError, ValueError):
        return cores
