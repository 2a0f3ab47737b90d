"""Serve the registry's current model through the configured backend; hot-swap on publish.

The app resolves `current` (one readlink) at the start of every request. When it changed, the new version is
loaded once under a lock and replaces the old one for later requests; a request in flight holds its own reference
to the model it started with and finishes on it.

Backends (app/backends/): `transformers` (reference), `llamacpp` (the version's GGUF through llama-cpp-python),
`openai` (an OpenAI-compatible server); `auto` (the default) picks llamacpp on a CPU when it is installed and the
version has its GGUF, else transformers. A version published with `ragqa models publish-served` names its server
in its manifest and is served by `openai` whatever the config says. When the llamacpp backend cannot serve a
version (llama-cpp-python missing, no GGUF and no converter, a GGUF llama.cpp rejects) the version is served by
transformers instead and the reason is logged once and shown by `ragqa models current`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from app.backends.base import (
    MAX_CONTEXT_TOKENS,
    GenerationError,
    GenerationStats,
    Sampled,
    ServedModel,
)
from app.backends.transformers_lm import DECODE_PATHS, TransformersModel, check_decode
from model_store.loading import pick_dtype
from model_store.registry import ModelRegistry, ModelVersion, RegistryError

log = logging.getLogger(__name__)

# The transformers model class under its historic name (tests, benchmarks and scripts use it).
LoadedModel = TransformersModel

# While `auto` serves a version with transformers only because llama.cpp is not there yet (`make run` builds it in
# the background after the page is up, then writes the GGUF), look again this often and switch when it lands.
LLAMACPP_RECHECK_S = 30.0

__all__ = [
    "DECODE_PATHS",
    "MAX_CONTEXT_TOKENS",
    "GenerationError",
    "GenerationStats",
    "Generator",
    "LoadedModel",
    "Sampled",
    "ServedModel",
    "check_decode",
    "pick_dtype",
]


class Generator:
    """Holds the loaded current version and swaps it when the registry's `current` moves."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        dtype: str = "auto",
        load_in_4bit: bool = False,
        backend: str = "transformers",
        config: Any = None,
    ) -> None:
        self.registry = registry
        self.dtype = dtype
        self.load_in_4bit = load_in_4bit
        self.backend = backend
        self.config = config  # AppConfig: llamacpp/openai settings (None = defaults)
        self.fallback_reason: str | None = None  # why the configured backend is not the one serving
        self._loaded: ServedModel | None = None
        self._lock = threading.Lock()
        self._awaiting_llamacpp = False  # auto chose transformers for want of llama.cpp or the version's GGUF
        self._next_llamacpp_check = 0.0

    def current(self) -> ServedModel:
        """The model for one request: resolve `current`, load it if it is new, return it."""
        name = self.registry.current_name()
        if name is None:
            raise GenerationError("no model is published yet: run `ragqa setup` to import the default model")
        loaded = self._loaded
        if loaded is not None and loaded.version == name and not self._llamacpp_arrived():
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.version != name or self._awaiting_llamacpp:
                try:
                    version = self.registry.get(name)
                except RegistryError as e:
                    raise GenerationError(f"{e}; switch with `ragqa models rollback VERSION`") from e
                self._loaded = self.load(version)
            return self._loaded

    def _llamacpp_arrived(self) -> bool:
        """True (at most every LLAMACPP_RECHECK_S) when `auto` now would serve the current version with llamacpp."""
        if not self._awaiting_llamacpp or time.monotonic() < self._next_llamacpp_check:
            return False
        self._next_llamacpp_check = time.monotonic() + LLAMACPP_RECHECK_S
        import importlib

        importlib.invalidate_caches()  # a package installed after start-up is invisible to a cached finder
        try:
            version = self.registry.get(self._loaded.version)  # a fresh manifest: the GGUF may be new
        except RegistryError:
            return False
        return self._auto_backend(version) == "llamacpp"

    # ---- choosing and loading a backend ------------------------------------------------------------
    def backend_for(self, version: ModelVersion) -> str:
        """The backend that will serve `version`: its manifest's server, else the config's, `auto` resolved."""
        serving = version.manifest.get("serving") or {}
        backend = serving.get("backend") or self.backend
        return self._auto_backend(version) if backend == "auto" else backend

    def expected_backend(self, version: ModelVersion) -> str:
        """The backend `load` ends up with, without loading: `backend_for`, except that a llamacpp it cannot have
        (llama-cpp-python missing, or no GGUF of the wanted type) falls back to transformers there too. For
        `ragqa doctor` and `ragqa eval`, which report where the answers are computed."""
        backend = self.backend_for(version)
        if backend == "llamacpp" and self.llamacpp_unavailable(version):
            return "transformers"
        return backend

    def llamacpp_unavailable(self, version: ModelVersion) -> str | None:
        """Why llama.cpp cannot serve `version` (the message load() falls back to transformers with), or None."""
        from app.backends.llamacpp_lm import INSTALL_HINT, llama_cpp_available

        if not llama_cpp_available():
            return f"llama-cpp-python is not installed; {INSTALL_HINT}"
        try:
            self._gguf_for(version)
        except GenerationError as e:
            return str(e)
        return None

    def load(self, version: ModelVersion) -> ServedModel:
        self._awaiting_llamacpp = False
        backend = self.backend_for(version)
        self.fallback_reason = None
        if backend == "openai":
            return self._load_openai(version)
        if backend == "llamacpp":
            try:
                return self._load_llamacpp(version)
            except GenerationError as e:
                self.fallback_reason = f"llamacpp backend unavailable for {version.name}: {e}"
                log.warning("%s; serving it with transformers instead", self.fallback_reason)
        return TransformersModel.load(version, dtype=self.dtype, load_in_4bit=self.load_in_4bit)

    def _auto_backend(self, version: ModelVersion) -> str:
        """llamacpp when llama-cpp-python is installed, the version has its GGUF and no GPU would serve it.

        Nothing is ever converted while serving (a version without a GGUF is served by transformers); `ragqa models
        gguf` makes one.
        """
        from app.backends.llamacpp_lm import llama_cpp_available
        from model_store.gguf import find_gguf

        if self.load_in_4bit:
            return "transformers"
        import torch

        if torch.cuda.is_available():
            return "transformers"
        if not llama_cpp_available() or find_gguf(version.path, version.manifest) is None:
            self._awaiting_llamacpp = True  # served by transformers until both are there
            return "transformers"
        return "llamacpp"

    def _setting(self, key: str, default: Any = None) -> Any:
        return getattr(self.config, key, default) if self.config is not None else default

    def _load_llamacpp(self, version: ModelVersion) -> ServedModel:
        from app.backends.llamacpp_lm import LlamaCppModel

        why = self.llamacpp_unavailable(version)
        if why:
            raise GenerationError(why)
        gguf = self._gguf_for(version)
        threads = self._setting("llamacpp_threads")
        return LlamaCppModel.load(
            version,
            gguf,
            threads=threads,
            threads_now=self._server_threads(threads),
            prompt_lookup=bool(self._setting("prompt_lookup", True)),
        )

    def _server_threads(self, configured: int | None) -> Any:
        """The CPU-share policy's thread count per request, unless the config fixes llamacpp_threads."""
        if configured is not None or self.config is None:
            return None
        from model_store.cpu_share import ServerThreads
        from model_store.hardware import compute_threads

        return ServerThreads(self.config.paths.home, self.config.cpu_share_policy(), compute_threads())

    def _gguf_for(self, version: ModelVersion) -> Any:
        """The version's GGUF. None is ever made here: converting takes minutes and would hold a user's request,
        and a published version is immutable. Without one the caller serves with transformers and says why."""
        from model_store.gguf import find_gguf

        setting = self._setting("gguf", "auto")
        wanted = None if setting in ("auto", "off") else setting
        path = find_gguf(version.path, version.manifest, wanted)
        if path is None:
            kind = f"{wanted} " if wanted else ""
            raise GenerationError(
                f"{version.name} has no {kind}GGUF file; make one with `ragqa models gguf {version.name}`"
                + (f" --type {wanted}" if wanted else "")
            )
        return path

    def _load_openai(self, version: ModelVersion) -> ServedModel:
        from app.backends.openai_lm import OpenAIModel

        return OpenAIModel.load(
            version,
            base_url=self._setting("openai_base_url"),
            model=self._setting("openai_model"),
            api_key_env=self._setting("openai_api_key_env", "OPENAI_API_KEY"),
            timeout_s=self._setting("generation_timeout_s", 120.0),
            extra_body=self._setting("openai_extra_body"),
        )
