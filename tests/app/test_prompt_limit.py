"""app/prompt_limit.py and QAService.build_prompt: prompts trimmed to the limit the serving hardware sets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.config import AppConfig, ConfigError
from app.prompt_limit import (
    AVX2_PROMPT_TOKENS,
    AVX512_PROMPT_TOKENS,
    describe,
    parse_prompt_limit,
    prompt_token_limit,
)
from app.qa import MIN_PASSAGE_TOKENS, QAService
from model_store.hardware import CpuInfo
from retrieval.passage_trim import GAP
from retrieval.prompt import render_prompt
from retrieval.types import Passage
from settings.paths import Paths

AVX2 = CpuInfo("AMD EPYC", frozenset({"avx", "avx2", "fma", "f16c"}))
ZEN4 = CpuInfo("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}))


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("auto", "auto"),
        ("AUTO", "auto"),
        (False, "off"),
        ("off", "off"),
        (0, "off"),
        (512, "512"),
        ("600", "600"),
    ],
)
def test_parse(value: Any, parsed: str) -> None:
    assert parse_prompt_limit(value) == parsed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (100, "at least 256"),
        ("fast", "auto, off or a number"),
        (True, "auto, off or a number"),
        (None, "got nothing"),  # an empty `max_prompt_tokens:` is a slip, not "off"
        ("５１２", "auto, off or a number"),  # full-width digits: isdigit() says yes
        ("2²²", "auto, off or a number"),
    ],
)
def test_parse_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_prompt_limit(value)


def test_auto_follows_the_hardware() -> None:
    assert prompt_token_limit("auto", True, AVX2) == AVX2_PROMPT_TOKENS == 448
    assert prompt_token_limit("auto", True, ZEN4) == AVX512_PROMPT_TOKENS
    assert prompt_token_limit("auto", False, AVX2) is None  # a GPU or a remote server
    assert prompt_token_limit("off", True, AVX2) is None
    assert prompt_token_limit("600", False, AVX2) == 600  # an explicit number always wins
    assert describe("auto", True, AVX2) == {
        "max_prompt_tokens": 448,
        "reason": "CPU with no AVX-512: keeps the first token near 1 s",
    }


def test_doctor_and_eval_ask_the_backend_where_it_computes() -> None:
    from app.prompt_limit import serves_on_cpu

    # llama.cpp is built here for the CPU: a CUDA box that serves with it still prefills on the CPU
    assert serves_on_cpu("llamacpp", cuda=True) and serves_on_cpu("llamacpp", cuda=False)
    assert serves_on_cpu("transformers", cuda=False) and not serves_on_cpu("transformers", cuda=True)
    assert not serves_on_cpu("openai", cuda=False)


def test_config_key(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert AppConfig.load(paths).max_prompt_tokens == "auto"
    (tmp_path / "config.yaml").write_text("max_prompt_tokens: off\n")  # YAML 1.1: false
    assert AppConfig.load(paths).max_prompt_tokens == "off"
    (tmp_path / "config.yaml").write_text("max_prompt_tokens: 64\n")
    with pytest.raises(ConfigError, match="max_prompt_tokens: must be at least 256"):
        AppConfig.load(paths)


class _Words:
    """A served model whose tokens are words (enough to check the budget arithmetic)."""

    context_window = 4096
    on_cpu = True

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) for m in messages)


def _passages() -> list[Passage]:
    filler = " ".join(f"Filler sentence number {i} says nothing at all." for i in range(20))
    return [
        Passage(1, "c1", "tower.md", f"{filler} The Zorbium Tower opened in 1893. {filler}", 1.0),
        Passage(2, "c2", "other.md", filler, 0.5),
    ]


def _service(setting: str) -> QAService:
    service = QAService.__new__(QAService)  # build_prompt reads only the config
    service.config = SimpleNamespace(max_new_tokens=100, max_prompt_tokens=setting)  # type: ignore[assignment]
    return service


def test_build_prompt_trims_above_the_limit_and_not_below() -> None:
    model, question = _Words(), "When did the Zorbium Tower open?"
    messages, kept = _service("300").build_prompt(model, question, _passages(), [])  # type: ignore[arg-type]
    assert model.count_tokens(messages) <= 300
    assert (
        [p.chunk_id for p in kept] == ["c1", "c2"]
        and "opened in 1893" in kept[0].text
        and GAP in kept[0].text
    )
    assert messages == render_prompt(question, kept)
    # The candidates path re-prompts with the passages shown: trimmed passages come back unchanged.
    assert _service("300").build_prompt(model, question, kept, [])[1] == kept  # type: ignore[arg-type]
    messages, kept = _service("off").build_prompt(model, question, _passages(), [])  # type: ignore[arg-type]
    assert kept == _passages() and model.count_tokens(messages) > 300


def test_a_long_conversation_still_leaves_the_passages_room() -> None:
    model, question = _Words(), "When did the Zorbium Tower open?"
    history = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    messages, kept = _service("300").build_prompt(model, question, _passages(), history)  # type: ignore[arg-type]
    bare = model.count_tokens(render_prompt(question, [], history))
    assert bare > 300 and model.count_tokens(messages) <= bare + MIN_PASSAGE_TOKENS
    assert kept and "opened in 1893" in kept[0].text
    # the candidates path re-prompts with the passages shown and the same conversation: nothing changes
    again = _service("300").build_prompt(model, question, kept, history)  # type: ignore[arg-type]
    assert again == (messages, kept)
    # a smaller limit later (a config change) trims the trimmed passages further, one GAP per cut
    smaller = _service("256").build_prompt(model, question, kept, [])[1]  # type: ignore[arg-type]
    assert smaller and all(f"{GAP} {GAP}" not in p.text for p in smaller)
