"""Export a snapshot of the feedback as TRL datasets: preference pairs, demonstrations, prompts.

Layout of `out_dir` (flat files, one JSON object per line, UTF-8):
  preferences.train.jsonl / preferences.test.jsonl
      {"prompt": [chat messages], "chosen": [{"role": "assistant", "content": ...}],
       "rejected": [{"role": "assistant", "content": ...}], "meta": {...}}
      TRL's conversational preference format (RewardTrainer, DPOTrainer). `meta` holds the
      interaction id, source (ranking | correction | thumbs), margin (rank distance), chosen/rejected
      ids and model versions, rater session and user, simulated flag and origin; TRL ignores it
      (tests/feedback_store/test_feedback_trl.py trains a step on these files).
  sft.train.jsonl / sft.test.jsonl
      {"messages": prompt + [assistant answer], "meta": {...}}: answers raters wrote (corrections). A
      thumbs-up is not a demonstration (see feedback_store.pairs): it is an unpaired `label: true` row.
  unpaired.train.jsonl / unpaired.test.jsonl
      {"prompt": [chat messages], "completion": [{"role": "assistant", "content": ...}],
       "label": true|false, "meta": {...}}: TRL's unpaired preference format (KTOTrainer). One row per
      rating that counts (the latest of each rater session; a withdrawn rating gives none) and a
      `label: false` row per candidate of a "both bad" ranking. `meta` holds the source (thumbs |
      both_bad), the reason tags and comment, the candidate id, rater and feedback id.
  prompts.train.jsonl / prompts.test.jsonl
      {"prompt": [chat messages], "question": ..., "interaction_id": ..., "simulated": bool}: every
      distinct prompt, for PPO rollouts; `"relevance_gated": true` when every answer to it was the relevance
      gate's (the model was never asked: the retrain leaves these out of PPO's prompts).
  manifest.json
      snapshot_id, counts per file and split, created_at, store path, schema version, simulated items.

Every row's `meta` also carries `model_version` (the model that wrote the answer served to the user; for
unpaired rows the one that wrote the completion) and `chunk_ids` (the passages shown, in rank order), and
`relevance_gated: true` where the answer served was the relevance gate's abstention, not the model's.
The prompt is rendered by retrieval.prompt.render_prompt from the question, the passages shown and
the earlier turns, so training sees exactly what serving showed. The split is decided by a hash of
the normalised question, so a question (and all its pairs) is always on the same side and the split
is stable as the store grows. Lines are de-duplicated on their content, answers compared with
whitespace normalised (first occurrence kept).
`snapshot_id` is the sha256 over the data files' names and sha256s, so the same feedback gives the
same id; the model registry records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from feedback_store.pairs import (
    Demonstration,
    Pair,
    UnpairedRating,
    demonstrations,
    interaction_pairs,
    normalize_text,
    unpaired_ratings,
)
from feedback_store.records import InteractionRecord
from feedback_store.store import FeedbackStore

KINDS = ("preferences", "sft", "unpaired", "prompts")
SPLITS = ("train", "test")
MANIFEST = "manifest.json"


def file_name(kind: str, split: str) -> str:
    """`preferences.train.jsonl` etc.: the name of one exported file."""
    return f"{kind}.{split}.jsonl"


def normalize_question(question: str) -> str:
    """NFKC, case-folded, whitespace-collapsed: questions that differ only in form split together."""
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


def split_of(question: str, test_fraction: float) -> str:
    """'test' for a fixed `test_fraction` of questions (by hash), else 'train'; deterministic."""
    digest = hashlib.sha256(normalize_question(question).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


@dataclass(frozen=True)
class ExportManifest:
    """What an export wrote; `manifest.json` holds the same fields."""

    snapshot_id: str
    out_dir: Path
    created_at: str
    store_path: str
    schema_version: int
    test_fraction: float
    min_margin: int
    files: dict[str, dict[str, Any]]  # file name -> {"kind", "split", "rows", "simulated", "sha256"}
    counts: dict[str, Any] = field(default_factory=dict)  # pairs by source, dropped duplicates, both-bad, ...
    simulated: int = 0  # rows across all files that come from simulated raters

    def path(self, kind: str, split: str) -> Path:
        return self.out_dir / file_name(kind, split)

    def rows(self, kind: str, split: str | None = None) -> int:
        splits = SPLITS if split is None else (split,)
        return sum(self.files[file_name(kind, s)]["rows"] for s in splits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


class _Writer:
    """One output file: written to a temporary name, hashed as it goes, de-duplicating lines."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.final = out_dir / name
        self.tmp = out_dir / f".{name}.partial"
        self.handle: IO[bytes] = self.tmp.open("wb")
        self.sha = hashlib.sha256()
        self.rows = 0
        self.simulated = 0

    def write(self, row: dict[str, Any], simulated: bool) -> None:
        line = (json.dumps(row, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        self.handle.write(line)
        self.sha.update(line)
        self.rows += 1
        self.simulated += int(simulated)

    def finish(self) -> str:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.final)
        return self.sha.hexdigest()

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def _shown(rec: InteractionRecord) -> dict[str, Any]:
    """What every row's meta says about what the user saw: the serving model and the passages' chunk ids, and
    `relevance_gated: true` when the answer served was the app's relevance gate's, not that model's writing (the
    key is left out otherwise, so earlier exports keep their bytes)."""
    served = rec.candidates[0].model_version if rec.candidates else ""
    shown: dict[str, Any] = {"model_version": served, "chunk_ids": [p["chunk_id"] for p in rec.passages]}
    if rec.candidates and "relevance_gate" in (rec.candidates[0].sampling or {}):
        shown["relevance_gated"] = True
    return shown


def _prompt_row(rec: InteractionRecord, prompt: list[dict[str, str]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": prompt,
        "question": rec.question,
        "interaction_id": rec.id,
        "simulated": rec.simulated,
    }
    # Only when no answer came from a model: a Regenerate after the gate asked the model, so PPO may use it.
    if rec.candidates and all("relevance_gate" in (c.sampling or {}) for c in rec.candidates):
        row["relevance_gated"] = True
    return row


def _pair_row(rec: InteractionRecord, prompt: list[dict[str, str]], pair: Pair) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        "meta": {
            "interaction_id": rec.id,
            "source": pair.source,
            "margin": pair.margin,
            "chosen_id": pair.chosen_id,
            "rejected_id": pair.rejected_id,
            "chosen_model": pair.chosen_model,
            "rejected_model": pair.rejected_model,
            "rater": pair.rater,
            "user": pair.user,
            "simulated": pair.simulated,
            "origin": rec.origin,
            **_shown(rec),
        },
    }


def _sft_row(rec: InteractionRecord, prompt: list[dict[str, str]], demo: Demonstration) -> dict[str, Any]:
    return {
        "messages": [*prompt, {"role": "assistant", "content": demo.text}],
        "meta": {
            "interaction_id": rec.id,
            "source": demo.source,
            "demo_id": demo.demo_id,
            "model": demo.model,
            "rater": demo.rater,
            "user": demo.user,
            "simulated": demo.simulated,
            "origin": rec.origin,
            **_shown(rec),
        },
    }


def _unpaired_row(rec: InteractionRecord, prompt: list[dict[str, str]], u: UnpairedRating) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": u.text}],
        "label": u.label,
        "meta": {
            "interaction_id": rec.id,
            "source": u.source,
            "candidate_id": u.candidate_id,
            "feedback_id": u.feedback_id,
            "reason": u.reason,
            "comment": u.comment,
            "rater": u.rater,
            "user": u.user,
            "simulated": u.simulated,
            "origin": rec.origin,
            **_shown(rec),
            "model_version": u.model,
        },
    }


def _key(*parts: Any) -> bytes:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).digest()[:16]


def _progress(records: Iterator[InteractionRecord], total: int, enabled: bool) -> Iterator[InteractionRecord]:
    if not enabled:
        return records
    from tqdm import tqdm

    return iter(tqdm(records, total=total, desc="export feedback", unit="interaction"))


def export_snapshot(
    store: FeedbackStore,
    out_dir: str | Path,
    *,
    test_fraction: float = 0.1,
    min_margin: int = 0,
    progress: bool = False,
) -> ExportManifest:
    """Write the eight JSONL files and manifest.json to `out_dir` (created; existing files replaced).

    Streams: one pass over the store's interactions, writing line by line; memory holds only a
    16-byte key per line written (for de-duplication). Pairs with margin < min_margin are left out.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers = {(k, s): _Writer(out, file_name(k, s)) for k in KINDS for s in SPLITS}
    seen: dict[str, set[bytes]] = {k: set() for k in KINDS}
    counts: dict[str, Any] = {
        "interactions": 0,
        "pairs_implied": 0,
        "pairs_by_source": {"ranking": 0, "correction": 0, "thumbs": 0},
        "below_min_margin": 0,
        "both_bad_rankings": 0,
        "duplicates_dropped": {k: 0 for k in KINDS},
        "demonstrations_by_source": {"correction": 0},
        "unpaired_by_source": {"thumbs": 0, "both_bad": 0},
        "unpaired_by_label": {"true": 0, "false": 0},
        "ratings_withdrawn": 0,
    }

    def emit(kind: str, split: str, key: bytes, row: dict[str, Any], simulated: bool) -> bool:
        if key in seen[kind]:
            counts["duplicates_dropped"][kind] += 1
            return False
        seen[kind].add(key)
        writers[(kind, split)].write(row, simulated)
        return True

    try:
        for rec in _progress(store.iter_interactions(), store.count_interactions(), progress):
            counts["interactions"] += 1
            counts["both_bad_rankings"] += sum(r.both_bad for r in rec.rankings)
            counts["ratings_withdrawn"] += sum(r.withdrawn for r in rec.ratings)
            split = split_of(rec.question, test_fraction)
            prompt = rec.prompt_messages()
            prompt_key = json.dumps(prompt, ensure_ascii=False)
            prompt_row = _prompt_row(rec, prompt)
            # Gated and model-answered copies of one prompt are de-duplicated apart: were a gated copy seen first
            # the only one kept, the retrain would leave the prompt out of PPO although the model answered it.
            gated_key = "gated" if prompt_row.get("relevance_gated") else ""
            emit("prompts", split, _key(prompt_key, gated_key), prompt_row, rec.simulated)
            for pair in interaction_pairs(rec):
                counts["pairs_implied"] += 1
                if pair.margin < min_margin:
                    counts["below_min_margin"] += 1
                    continue
                key = _key(prompt_key, normalize_text(pair.chosen), normalize_text(pair.rejected))
                if emit("preferences", split, key, _pair_row(rec, prompt, pair), pair.simulated):
                    counts["pairs_by_source"][pair.source] += 1
            for demo in demonstrations(rec):
                if emit(
                    "sft",
                    split,
                    _key(prompt_key, normalize_text(demo.text)),
                    _sft_row(rec, prompt, demo),
                    demo.simulated,
                ):
                    counts["demonstrations_by_source"][demo.source] += 1
            for u in unpaired_ratings(rec):
                key = _key(prompt_key, normalize_text(u.text), u.label)
                if emit("unpaired", split, key, _unpaired_row(rec, prompt, u), u.simulated):
                    counts["unpaired_by_source"][u.source] += 1
                    counts["unpaired_by_label"][str(u.label).lower()] += 1
        digests = {w.final.name: w.finish() for w in writers.values()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    files = {
        file_name(k, s): {
            "kind": k,
            "split": s,
            "rows": writers[(k, s)].rows,
            "simulated": writers[(k, s)].simulated,
            "sha256": digests[file_name(k, s)],
        }
        for k in KINDS
        for s in SPLITS
    }
    snapshot = hashlib.sha256("".join(f"{n}\0{digests[n]}\n" for n in sorted(digests)).encode()).hexdigest()
    manifest = ExportManifest(
        snapshot_id=snapshot,
        out_dir=out,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        store_path=str(store.path),
        schema_version=store.schema_version(),
        test_fraction=test_fraction,
        min_margin=min_margin,
        files=files,
        counts=counts,
        simulated=sum(f["simulated"] for f in files.values()),
    )
    tmp = out / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(out_dir: str | Path) -> ExportManifest:
    """Load `manifest.json` of an export folder (training records its snapshot_id)."""
    d = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    d["out_dir"] = Path(out_dir)
    return ExportManifest(**d)


def write_rows_as_export(folder: Path, rows: dict[str, list[dict[str, Any]]]) -> Path:
    """An export folder from ready rows ({file name: rows}) with a minimal manifest (snapshot_id over the files'
    sha256s, row counts): what training.data.load_export reads. For benchmarks and tests that make their own
    feedback; the app's exports come from export_snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, items in rows.items():
        text = "".join(json.dumps(r) + "\n" for r in items)
        (folder / name).write_text(text)
        digests[name] = hashlib.sha256(text.encode()).hexdigest()
    snapshot = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    manifest = {"snapshot_id": snapshot, "files": {n: {"rows": len(r)} for n, r in rows.items()}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder
