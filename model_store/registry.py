"""Model registry: immutable version folders under RAGQA_HOME/models, one atomically switched `current`.

Layout::

    models/
      v0001/            weights, tokenizer, manifest.json (immutable once published)
      v0002/
      v0003.partial/    a publish in progress (or one that crashed): never listed, never served
      current -> v0002  symlink, replaced atomically with os.replace
      .records/v0002.json  artefacts derived later (a GGUF made by `ragqa models gguf`): the manifest stays as published

Publishing writes into `vNNNN.partial/`, fsyncs every file, then renames the folder: a crash at any point leaves
either no new version or a complete one, and `current` untouched until the final `os.replace`. The app resolves
`current` once per request, so a request in flight keeps the model it started with.

The registry knows nothing of what a publish adds (a GGUF copy, say): `publish(..., extras=fn)` calls
`fn(partial_folder)` after the weights are written and merges the dict it returns into the manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_store.errors import ModelStoreError
from model_store.files import fsync_dir, fsync_tree, write_atomically

MANIFEST = "manifest.json"
CURRENT = "current"
RECORDS = ".records"  # derived-artefact records, one JSON per version, beside the immutable folders
_VERSION_RE = re.compile(r"^v(\d{4,})$")

Extras = Callable[[Path], dict[str, Any]]
"""publish hook: (the filled .partial folder) -> keys to add to the manifest (may write files into the folder)."""


class RegistryError(ModelStoreError):
    """A registry operation could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class ModelVersion:
    name: str  # "v0003"
    path: Path
    manifest: dict[str, Any]  # manifest.json as published, with the derived records (`records`) laid over it
    records: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why this version cannot be used (listing() only; never served)

    @property
    def created_at(self) -> str:
        return str(self.manifest.get("created_at", ""))


def _manifest_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelRegistry:
    """Versions, the current pointer, publish and rollback. Cheap to construct; all state is on disk."""

    def __init__(self, models_dir: Path) -> None:
        self.root = Path(models_dir)

    # ---- reading -----------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        """Usable published versions, oldest first. `.partial` folders (unfinished publishes) and broken
        versions (see `listing`) are left out, so one damaged folder does not break every command."""
        return [v for v in self.listing() if v.problem is None]

    def listing(self) -> list[ModelVersion]:
        """Every version folder, oldest first; a damaged one (bad manifest, or a symlink) has `problem` set."""
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if not _VERSION_RE.match(p.name) or not (p.is_dir() or p.is_symlink()):
                continue
            try:
                out.append(self._version(p))
            except RegistryError as e:
                out.append(ModelVersion(p.name, p, {}, problem=str(e)))
        return out

    def get(self, name: str) -> ModelVersion:
        path = self.root / name
        if not _VERSION_RE.match(name) or not (path.is_dir() or path.is_symlink()):
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise RegistryError(f"no model version {name!r} (published versions: {known})")
        return self._version(path)

    def current_name(self) -> str | None:
        """The name `current` points at, read with one readlink (cheap enough to call per request)."""
        try:
            target = os.readlink(self.root / CURRENT)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def current(self) -> ModelVersion | None:
        name = self.current_name()
        return None if name is None else self.get(name)

    def base(self) -> ModelVersion | None:
        """The first published version: retrains start from it by default (no drift from stacked fine-tunes)."""
        versions = self.versions()
        return versions[0] if versions else None

    def _version(self, path: Path) -> ModelVersion:
        # Versions are folders the registry wrote; a symlink would serve (and let `current` point at) weights
        # from anywhere on the machine, replaceable behind the registry's back.
        if path.is_symlink():
            raise RegistryError(
                f"model version {path.name} is a symlink (to {os.readlink(path)}), not a published folder: "
                "refused; publish the model with `ragqa models` / retrain instead"
            )
        records = self._read_records(path.name)
        return ModelVersion(path.name, path, {**self._read_manifest(path), **records}, records)

    def _records_file(self, name: str) -> Path:
        return self.root / RECORDS / f"{name}.json"

    def _read_records(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._records_file(name).read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise RegistryError(f"model version {name}: {RECORDS}/{name}.json is not valid JSON ({e})") from e

    def _read_manifest(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError as e:
            raise RegistryError(f"model version {path.name} has no {MANIFEST}; the folder is damaged") from e
        except json.JSONDecodeError as e:
            raise RegistryError(f"model version {path.name}: {MANIFEST} is not valid JSON ({e})") from e
        except (OSError, UnicodeDecodeError) as e:
            raise RegistryError(f"model version {path.name}: {MANIFEST} cannot be read ({e})") from e
        if not isinstance(data, dict):
            raise RegistryError(f"model version {path.name}: {MANIFEST} is not a JSON object")
        return data

    # ---- writing -----------------------------------------------------------------------------------
    def next_name(self) -> str:
        numbers = [0]
        if self.root.is_dir():
            for p in self.root.iterdir():
                m = _VERSION_RE.match(p.name.removesuffix(".partial"))
                if m:
                    numbers.append(int(m.group(1)))
        return f"v{max(numbers) + 1:04d}"

    def publish(
        self,
        write: Callable[[Path], None],
        manifest: dict[str, Any],
        *,
        make_current: bool = True,
        extras: Extras | None = None,
    ) -> ModelVersion:
        """Publish a new version: `write(folder)` fills a fresh `.partial` folder, then it is made visible.

        The manifest gets `version`, `parent` (the current version) and `created_at` unless given.
        `extras(folder)`, called after `write`, returns keys for the manifest (model_store.gguf.gguf_extras
        writes a GGUF copy for the llamacpp backend and returns its record); it runs before the rename, so a
        version is never visible without what it adds.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # One publisher at a time (a retrain and a `ragqa setup` may race); the lock dies with the process.
        with open(self.root / ".publish.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.clean_partials()
            name = self.next_name()
            partial = self.root / f"{name}.partial"
            partial.mkdir()
            try:
                write(partial)
                if extras is not None:
                    manifest = {**manifest, **extras(partial)}
                full = {"version": name, "parent": self.current_name(), "created_at": now_iso(), **manifest}
                (partial / MANIFEST).write_text(_manifest_text(full))
                fsync_tree(partial)
                os.rename(partial, self.root / name)
                fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            if make_current:
                self.switch(name)
        return self.get(name)

    def publish_folder(
        self,
        src: Path,
        manifest: dict[str, Any],
        *,
        make_current: bool = True,
        extras: Extras | None = None,
    ) -> ModelVersion:
        """Publish a copy of a finished model folder (weights + tokenizer)."""
        src = Path(src)
        if not (src / "config.json").is_file():
            raise RegistryError(f"{src} is not a model folder (no config.json)")

        def copy(dst: Path) -> None:
            for item in src.iterdir():
                if item.name == MANIFEST or item.suffix == ".gguf":  # a GGUF is made from these weights
                    continue
                if item.is_dir():
                    shutil.copytree(item, dst / item.name)
                else:
                    shutil.copy2(item, dst / item.name)

        return self.publish(copy, manifest, make_current=make_current, extras=extras)

    def record(self, name: str, key: str, value: Any) -> ModelVersion:
        """Record a derived artefact (e.g. a GGUF made later) for a published version, atomically.

        The version's manifest.json is never rewritten (a published version is immutable): the record goes to
        `.records/<name>.json` beside the version folders and is laid over the manifest when the version is read.
        """
        version = self.get(name)
        self.root.joinpath(RECORDS).mkdir(exist_ok=True)
        write_atomically(self._records_file(name), _manifest_text({**version.records, key: value}))
        return self.get(name)

    def switch(self, name: str) -> ModelVersion:
        """Point `current` at a published version atomically (new symlink, then os.replace onto `current`)."""
        version = self.get(name)
        tmp = self.root / f".current.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(name, tmp)  # relative target: the home folder can move
        os.replace(tmp, self.root / CURRENT)
        fsync_dir(self.root)
        return version

    def rollback(self, name: str | None = None) -> ModelVersion:
        """Switch to `name`, or to the current version's parent (else the previous version) when not given."""
        if name is not None:
            return self.switch(name)
        current = self.current()
        if current is None:
            raise RegistryError("no current model version to roll back from")
        parent = current.manifest.get("parent")
        if parent and (self.root / parent).is_dir():
            return self.switch(parent)
        older = [v.name for v in self.versions() if v.name < current.name]
        if not older:
            raise RegistryError(f"{current.name} is the first version; there is nothing to roll back to")
        return self.switch(older[-1])

    def clean_partials(self) -> list[str]:
        """Delete folders left by crashed publishes (they were never visible)."""
        removed = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.endswith(".partial") and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed
