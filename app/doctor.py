"""`ragqa doctor`: what this machine is and what the app will do on it, for bug reports.

CPU model and the flags that matter, the cores a job can really get, torch, the compute dtypes chosen for serving
and for training and why (model_store.hardware.choose_dtype), the backend that will serve the current version,
llama.cpp's build, memory, disk and load. Everything is read, nothing is loaded or changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from app import prompt_limit
from model_store import hardware


def collect(cfg: Any, training: tuple[str, str]) -> dict[str, Any]:
    """The report as a JSON-ready dict (`cfg`: the AppConfig; `training`: the retrain config's precision setting
    and device, read by the CLI wiring because serving code never imports training/)."""
    import torch

    cpu = hardware.read_cpuinfo()
    cuda, cuda_bf16 = hardware.cuda_state()
    serve_device = "cuda" if cuda else "cpu"
    serve = hardware.choose_dtype(cfg.dtype, device=serve_device, cpu=cpu, cuda_bf16=cuda_bf16)
    train_setting, train_device = training
    if train_device == "auto":
        train_device = "cuda" if cuda else "cpu"
    train = hardware.choose_dtype(train_setting, device=train_device, cpu=cpu, cuda_bf16=cuda_bf16)
    quota = hardware.cgroup_cpu_limit()
    backend = _backend(cfg)
    on_cpu = prompt_limit.serves_on_cpu(backend.get("serving") or cfg.backend, cuda)
    return {
        "cpu": {
            "model": cpu.model,
            "flags": cpu.relevant_flags,
            "native_bf16": list(cpu.native_bf16),
        },
        "cores": {
            "os_cpu_count": os.cpu_count(),
            "affinity": hardware.affinity_cores(),
            "cgroup_quota": quota,
            "usable": hardware.usable_cores(quota=quota, read_quota=False),
        },
        "torch": {
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": cuda,
            "cuda_bf16": cuda_bf16,
        },
        "serve_dtype": serve.dtype,
        "train_dtype": train.dtype,
        "dtypes": {"serve": serve.to_json(), "train": train.to_json()},
        "backend": backend,
        "prompt_limit": prompt_limit.describe(cfg.max_prompt_tokens, on_cpu, cpu),
        "relevance_gate": _relevance_gate(cfg),
        "index": _index(cfg),
        "llama_cpp": _llama_cpp(cpu),
        "cpu_share": _cpu_share(cfg),
        "memory": _memory(),
        "disk": _disk(cfg.paths.home),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "ragqa_home": str(cfg.paths.home),
    }


def _index(cfg: Any) -> dict[str, Any]:
    from retrieval.index import index_summary

    return index_summary(cfg.paths.index_dir)


def _index_line(index: dict[str, Any]) -> str:
    if index["state"] == "missing":
        return f"index:        none at {index['path']} ({index['advice']})"
    if index["state"] == "damaged":
        return f"index:        {index['error']}"
    c = index["chunking"]
    line = (
        f"index:        {index['files']} files, {index['chunks']} chunks ({index['embedder']}; chunks of "
        f"{c['chunk_tokens']} tokens, overlap {c['overlap']}, {c['starts']} starts)"
    )
    return line + (f"\n              {index['advice']}" if index.get("advice") else "")


def _relevance_gate(cfg: Any) -> dict[str, Any]:
    """The threshold below which questions get "not in the documents" without the model (the embedder unloaded:
    named as QAService will name it)."""
    from app.qa import relevance_floor
    from retrieval.embedder import embedder_name

    value, reason = relevance_floor(cfg.min_relevance, embedder_name(cfg.embedder))
    return {"min_relevance": value, "reason": reason}


def _backend(cfg: Any) -> dict[str, Any]:
    from app.backends.llamacpp_lm import llama_cpp_available
    from app.generator import Generator
    from model_store.gguf import find_gguf
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(cfg.paths.models_dir)
    version = registry.current()
    info: dict[str, Any] = {
        "configured": cfg.backend,
        "llama_cpp_installed": llama_cpp_available(),
        "current_version": None if version is None else version.name,
    }
    if version is None:
        info.update(serving=None, reason="no model published: run `ragqa setup`")
        return info
    gguf = find_gguf(version.path, version.manifest)
    info["gguf"] = None if gguf is None else gguf.name
    generator = Generator(
        registry, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit, backend=cfg.backend, config=cfg
    )
    info["serving"] = generator.expected_backend(version)  # what load() falls back to, where it must
    info["reason"] = _backend_reason(cfg.backend, version.manifest, info)
    if generator.backend_for(version) == "llamacpp" and info["serving"] != "llamacpp":
        why = generator.llamacpp_unavailable(version)
        info["reason"] = (
            f"llamacpp is configured but cannot serve {version.name} ({why}): transformers serves it"
        )
    return info


def _backend_reason(configured: str, manifest: dict[str, Any], info: dict[str, Any]) -> str:
    if (manifest.get("serving") or {}).get("backend"):
        return "the version is published as a model served elsewhere"
    if configured != "auto":
        return f"configured backend: {configured}"
    if not info["llama_cpp_installed"]:
        return "auto: llama-cpp-python is not installed"
    if info["gguf"] is None:
        return "auto: the current version has no GGUF file (`ragqa models gguf`)"
    if info["serving"] == "transformers":
        return "auto: a CUDA GPU (or 4-bit loading) serves with transformers"
    return f"auto: llama-cpp-python installed and {info['gguf']} present"


# llama.cpp's name for an instruction set -> the /proc/cpuinfo flag it needs (the ones the Makefile names)
LLAMA_CPP_KERNELS = {
    "AVX2": "avx2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AVX512_VBMI": "avx512vbmi",
}


def _llama_cpp(cpu: hardware.CpuInfo) -> dict[str, Any]:
    """llama-cpp-python's version, the instruction sets its llama.cpp was built with, how they fit this CPU
    (a build from another machine may lack this one's kernels, or use some it does not have), and the GGUF type
    `gguf: auto` publishes here."""
    from app.backends.llamacpp_lm import llama_cpp_available
    from model_store.gguf import auto_outtype

    if not llama_cpp_available():
        return {"installed": False, "gguf_auto": auto_outtype(cpu)}
    import llama_cpp

    system = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    built = instruction_sets(system)
    return {
        "installed": True,
        "version": getattr(llama_cpp, "__version__", "?"),
        "instruction_sets": built,
        **build_fit(built, cpu),
        "gguf_auto": auto_outtype(cpu),
        "system_info": system,
    }


def instruction_sets(system_info: str) -> list[str]:
    """The instruction sets a `llama_print_system_info()` text says its llama.cpp was built with ("X = 1")."""
    features = [
        name.strip()
        for part in system_info.split("|")
        if "=" in part
        for name, value in [part.rsplit("=", 1)]
        if value.strip() == "1"
    ]
    return [f.split(":")[-1].strip() for f in features]


def build_fit(built: list[str], cpu: hardware.CpuInfo) -> dict[str, list[str]]:
    """`not_built`: kernels this CPU could run that the build lacks (rebuild for speed); `not_on_this_cpu`:
    instruction sets the build uses that this CPU lacks (it may crash: rebuild)."""
    return {
        "not_built": [k for k, flag in LLAMA_CPP_KERNELS.items() if flag in cpu.flags and k not in built],
        "not_on_this_cpu": [
            k for k, flag in LLAMA_CPP_KERNELS.items() if k in built and flag not in cpu.flags
        ],
    }


def _cpu_share(cfg: Any) -> dict[str, Any]:
    from model_store.cpu_share import plan_job, running, server_threads

    policy = cfg.cpu_share_policy()
    cores = hardware.usable_cores()
    jobs = running(cfg.paths.home, "job")
    job = plan_job(cfg.paths.home, policy, cores)
    return {
        "servers": [s["pid"] for s in running(cfg.paths.home, "server")],
        "jobs": [{"pid": j["pid"], "kind": j.get("kind")} for j in jobs],
        "server_threads_now": cfg.llamacpp_threads or server_threads(cores, bool(jobs), policy),
        "job_threads_now": job.threads,
        "job_nice": job.nice,
    }


def _memory() -> dict[str, float | None]:
    """Total and available memory in GB from /proc/meminfo, and the cgroup limit when one is set."""
    values: dict[str, float | None] = {"total_gb": None, "available_gb": None, "cgroup_limit_gb": None}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                gb = int(rest.split()[0]) / 1024**2
                values["total_gb" if key == "MemTotal" else "available_gb"] = round(gb, 2)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            values["cgroup_limit_gb"] = round(int(limit) / 1024**3, 2)
    except (OSError, ValueError):
        pass
    return values


def _disk(home: Path) -> dict[str, Any]:
    """Free space where RAGQA_HOME is (or would be created)."""
    where = Path(home)
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    return {
        "path": str(where),
        "free_gb": round(usage.free / 1024**3, 2),
        "total_gb": round(usage.total / 1024**3, 2),
    }


def text(report: dict[str, Any]) -> str:
    """The report for a terminal, one fact per line."""
    cpu, cores, torch_info = report["cpu"], report["cores"], report["torch"]
    backend, llama = report["backend"], report["llama_cpp"]
    mem, disk, share = report["memory"], report["disk"], report["cpu_share"]
    load = report["load_average"]
    lines = [
        f"cpu:          {cpu['model']}",
        f"flags:        {' '.join(cpu['flags']) or '-'}",
        f"cores:        {cores['usable']} usable (affinity {cores['affinity']}, cgroup quota "
        f"{cores['cgroup_quota'] or 'none'}, os.cpu_count {cores['os_cpu_count']})",
        f"torch:        {torch_info['version']}, {torch_info['threads']} threads, "
        f"cuda {'yes' if torch_info['cuda'] else 'no'}",
    ]
    for name in ("serve", "train"):
        d = report["dtypes"][name]
        lines.append(f"{name + ' dtype:':<14}{d['dtype']} on {d['device']} ({d['reason']})")
    if "train_compile" in report:  # added by the CLI, which reads the retrain config
        compiled = report["train_compile"]
        lines.append(f"train compile: {'on' if compiled['compiled'] else 'off'} ({compiled['reason']})")
    if "train_attention" in report:
        attention = report["train_attention"]
        lines.append(f"train attn:   {attention['attention']} ({attention['reason']})")
    if "train_micro_batches" in report:
        micro = report["train_micro_batches"]
        lines.append(
            "train batch:  "
            + ", ".join(
                f"{stage} {m['micro_batch']} x {m['grad_accum']} accumulated" for stage, m in micro.items()
            )
        )
    lines.append(
        f"backend:      {backend.get('serving') or '-'} ({backend['reason']}); configured {backend['configured']}"
    )
    if llama["installed"]:
        lines.append(f"llama.cpp:    {llama['version']}, built with {' '.join(llama['instruction_sets'])}")
        if llama["not_on_this_cpu"]:
            lines.append(
                f"              built for {' '.join(llama['not_on_this_cpu'])}, which this CPU lacks: it may "
                "crash; rebuild with `make clean install`"
            )
        if llama["not_built"]:
            lines.append(
                f"              without this CPU's {' '.join(llama['not_built'])} kernels: `make clean install` "
                "builds them"
            )
    else:
        lines.append("llama.cpp:    not installed (pip install -e '.[llamacpp]')")
    limit = report["prompt_limit"]
    tokens = limit["max_prompt_tokens"]
    lines.append(
        f"prompt limit: {f'{tokens} tokens' if tokens else 'no limit'} ({limit['reason']}; passages are trimmed "
        "to their question-relevant sentences above it)"
    )
    gate = report["relevance_gate"]
    lines.append(
        f"relevance:    {'gate at ' + format(gate['min_relevance'], '.2f') if gate['min_relevance'] else 'gate off'} "
        f"({gate['reason']}; below it no passage is close enough and the model is not asked)"
    )
    if "index" in report:
        lines.append(_index_line(report["index"]))
    lines.append(f"gguf auto:    {llama['gguf_auto']} (bf16 with native bf16 instructions, else f16)")
    lines.append(
        f"cpu share:    server {share['server_threads_now']} threads now; a retrain/eval would use "
        f"{share['job_threads_now']} at nice +{share['job_nice']} (servers {share['servers'] or 'none'}, "
        f"jobs {[j['pid'] for j in share['jobs']] or 'none'})"
    )
    lines.append(f"memory:       {mem['available_gb']} GB available of {mem['total_gb']} GB")
    lines.append(f"disk:         {disk['free_gb']} GB free of {disk['total_gb']} GB at {disk['path']}")
    if load:
        lines.append(f"load average: {' '.join(f'{x:.2f}' for x in load)}")
    lines.append(f"RAGQA_HOME:   {report['ragqa_home']}")
    return "\n".join(lines)
