"""The openai backend against a real OpenAI-compatible server: llama.cpp's (llama_cpp.server, from the llamacpp
extra) serving the default model's GGUF under a version name, as vLLM or TGI would on a GPU cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.backends.base import GenerationStats
from app.config import AppConfig
from app.generator import GenerationError, Generator
from model_store.registry import ModelRegistry
from tests.conftest import llama_cpp_or_skip

MESSAGES = [{"role": "user", "content": "Name three primary colours."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(default_gguf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on the f16 GGUF, serving it as model "v0001"; yields the /v1 base URL."""
    llama_cpp_or_skip()
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_dir / "model.f16.gguf")]
    cmd += ["--model_alias", "v0001", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    cmd += ["--n_threads", "2"]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"  # a file: a full pipe would block the server
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-800:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def openai_generator(default_registry: Path, llama_server: str) -> Generator:
    cfg = AppConfig.load(backend="openai", openai_base_url=llama_server)
    return Generator(ModelRegistry(default_registry), backend="openai", config=cfg)


def test_streams_a_greedy_answer_from_the_server(openai_generator: Generator) -> None:
    model = openai_generator.current()
    assert model.backend == "openai" and model.model == "v0001"  # served under the version's name
    stats = GenerationStats()
    pieces = list(model.stream(MESSAGES, max_new_tokens=24, stats=stats))
    assert len(pieces) >= 3 and "".join(pieces).strip()
    assert stats.completion_tokens == len(pieces) and stats.finish_reason in ("stop", "length")
    assert stats.prompt_tokens == model.count_tokens(MESSAGES)  # counted with the version's own tokenizer
    again = "".join(model.stream(MESSAGES, max_new_tokens=24))
    assert again == "".join(pieces)  # temperature 0: the same answer twice


def test_samples_candidates_with_distinct_seeds(openai_generator: Generator) -> None:
    sampled = openai_generator.current().sample(MESSAGES, 2, seed=5, max_new_tokens=16, temperature=1.0)
    assert len(sampled) == 2 and all(s.text for s in sampled)
    assert [s.sampling["seed"] for s in sampled] == [5, 6]
    assert {s.sampling["served_model"] for s in sampled} == {"v0001"}


def test_publish_served_points_the_app_at_a_served_model(
    default_registry: Path, llama_server: str, capsys
) -> None:
    """A version that is only a name on a server: the app follows it whatever the configured backend."""
    from app.cli import main

    assert main(["models", "publish-served", "v0001", "--url", llama_server, "--context-window", "2048"]) == 0
    registry = ModelRegistry(default_registry)
    assert registry.current_name() == "v0002"
    assert (default_registry / "v0002" / "tokenizer.json").is_file()
    model = Generator(registry, backend="transformers", config=AppConfig.load()).current()
    assert (model.backend, model.version, model.context_window) == ("openai", "v0002", 2048)
    assert "".join(model.stream(MESSAGES, max_new_tokens=8)).strip()
    assert "v0002" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"served=v0001@{llama_server}" in listed and "gguf=-" in listed


def test_unreachable_server_is_a_clear_error(default_registry: Path) -> None:
    cfg = AppConfig.load(backend="openai", openai_base_url=f"http://127.0.0.1:{_free_port()}/v1")
    model = Generator(ModelRegistry(default_registry), backend="openai", config=cfg).current()
    with pytest.raises(GenerationError, match="cannot be reached"):
        list(model.stream(MESSAGES, max_new_tokens=4))


def test_missing_url_is_a_clear_error(default_registry: Path) -> None:
    generator = Generator(ModelRegistry(default_registry), backend="openai", config=AppConfig.load())
    with pytest.raises(GenerationError, match="openai_base_url"):
        generator.current()


def test_without_a_tokenizer_tokens_are_estimated(default_registry: Path, tmp_path: Path) -> None:
    from app.backends.openai_lm import OpenAIModel

    registry = ModelRegistry(default_registry)
    version = registry.publish(
        lambda d: None, {"kind": "served", "serving": {"backend": "openai", "model": "m"}}
    )
    model = OpenAIModel.load(version, base_url="http://127.0.0.1:9/v1")
    assert model.codec is None and model.context_window == 4096
    assert model.count_text_tokens("x" * 300) == 101
    assert model.count_tokens(MESSAGES) > len(MESSAGES[0]["content"]) // 4
