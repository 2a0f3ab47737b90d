"""Any OpenAI-compatible server (vLLM, llama.cpp's server, TGI, ...) by URL and model name: the GPU-cluster path.

The app still retrieves, renders the prompt and finds citations itself; the server only writes the answer, from
the same chat messages every backend gets (the server applies the model's chat template). The served model is
the version's `serving.model` from its manifest (`ragqa models publish-served`), else `openai_model` from the
config, else the version's name (serve each published folder under its version name, e.g.
`vllm serve var/models/v0003 --served-model-name v0003`).

Token counting (to fit passages into the window) uses the version folder's tokenizer when it has one, else a
conservative estimate of 3 characters per token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.backends.base import (
    Decoding,
    GenerationError,
    GenerationStats,
    PromptCodec,
    Sampled,
    Sampling,
    ServedModel,
)

CHARS_PER_TOKEN_ESTIMATE = 3.0  # English averages ~4 characters per token; 3 leaves room for code and numbers


class OpenAIModel(ServedModel):
    backend = "openai"
    on_cpu = False  # a server elsewhere prefills

    def __init__(
        self,
        version: Any,
        client: Any,
        model: str,
        codec: PromptCodec | None,
        context_window: int,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(version, codec, context_window)
        self.client = client
        self.model = model
        self.base_url = str(client.base_url)
        self.extra_body = dict(extra_body or {})

    @classmethod
    def load(
        cls,
        version: Any,
        *,
        base_url: str | None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        context_window: int | None = None,
        timeout_s: float = 120.0,
        extra_body: dict[str, Any] | None = None,
    ) -> OpenAIModel:
        from openai import OpenAI

        serving = version.manifest.get("serving") or {}
        base_url = serving.get("base_url") or base_url
        if not base_url:
            raise GenerationError(
                "backend openai needs a server URL: set openai_base_url in config.yaml "
                "(e.g. http://localhost:8000/v1) or publish with `ragqa models publish-served NAME --url URL`"
            )
        model = serving.get("model") or model or version.name
        codec = (
            PromptCodec.from_folder(version.path)
            if (version.path / "tokenizer_config.json").is_file()
            else None
        )
        window = context_window or serving.get("context_window") or _folder_window(version.path) or 4096
        # Local servers take any key; a hosted one reads it from the environment, never from config.yaml.
        client = OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "not-needed",
            timeout=timeout_s,
            max_retries=1,
        )
        return cls(version, client, model, codec, window, extra_body)

    def describe(self) -> str:
        return f"{self.version} (openai: {self.model} at {self.base_url})"

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        if self.codec is not None:
            return super().count_tokens(messages)
        chars = sum(len(m["content"]) + 8 for m in messages)  # + role and turn markers
        return int(chars / CHARS_PER_TOKEN_ESTIMATE) + 8

    def count_text_tokens(self, text: str) -> int:
        if self.codec is not None:
            return super().count_text_tokens(text)
        return int(len(text) / CHARS_PER_TOKEN_ESTIMATE) + 1 if text else 0

    def _request(self, **kwargs: Any) -> Any:
        import openai

        try:
            return self.client.chat.completions.create(
                model=self.model, extra_body=self.extra_body or None, **kwargs
            )
        except openai.APIConnectionError as e:
            raise GenerationError(f"the model server at {self.base_url} cannot be reached ({e})") from e
        except openai.NotFoundError as e:
            raise GenerationError(
                f"the server at {self.base_url} does not serve model {self.model!r} ({e})"
            ) from e
        except openai.APIError as e:
            raise GenerationError(f"the model server at {self.base_url} failed: {e}") from e

    def _stream(
        self, messages: list[dict[str, str]], decoding: Decoding, stats: GenerationStats
    ) -> Iterator[str]:
        """Greedy (temperature 0). The repetition penalty is not an OpenAI parameter: servers take it in
        `openai_extra_body` (vLLM: repetition_penalty, llama.cpp server: repeat_penalty)."""
        import openai

        stats.prompt_tokens = self.count_tokens(messages)
        reason = "stop"
        chunks = self._request(
            messages=messages,
            max_tokens=decoding.max_new_tokens,
            temperature=0.0,
            stream=True,
            timeout=decoding.timeout_s,
        )
        try:
            for chunk in chunks:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                piece = choice.delta.content if choice.delta else None
                if piece:
                    stats.mark_token()  # one chunk per token on vLLM and llama.cpp's server
                    yield piece
                if choice.finish_reason:
                    reason = "length" if choice.finish_reason == "length" else "stop"
        except openai.APIError as e:
            raise GenerationError(f"the model server at {self.base_url} failed mid-answer: {e}") from e
        finally:
            chunks.close()
        stats.end(reason)

    def _sample(self, messages: list[dict[str, str]], request: Sampling) -> list[Sampled]:
        """`n` requests at once (not the `n` parameter: llama.cpp's server ignores it), seeds seed..seed+n-1."""
        start = time.perf_counter()

        def one(i: int) -> Any:
            return self._request(
                messages=messages,
                max_tokens=request.max_new_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed + i,
                timeout=request.timeout_s,
            )

        with ThreadPoolExecutor(max_workers=request.n) as pool:
            responses = list(pool.map(one, range(request.n)))
        latency = (time.perf_counter() - start) * 1000
        results = []
        for i, response in enumerate(responses):
            choice = response.choices[0]
            text = (choice.message.content or "").strip()
            usage = getattr(response, "usage", None)
            tokens = usage.completion_tokens if usage else self.count_text_tokens(text)
            settings = request.record(i, seed=request.seed + i, backend=self.backend, served_model=self.model)
            settings["repetition_penalty"] = self._penalty()  # what the server applied, not what was asked
            settings["top_k"] = self.extra_body.get(
                "top_k"
            )  # not an OpenAI parameter: the server's own unless sent
            results.append(Sampled(text, choice.finish_reason == "stop", tokens, latency, settings))
        return results

    def _penalty(self) -> float:
        """The repetition penalty the server applied: only what `openai_extra_body` sent (vLLM / llama.cpp)."""
        return float(self.extra_body.get("repetition_penalty", self.extra_body.get("repeat_penalty", 1.0)))

    def close(self) -> None:
        self.client.close()


def _folder_window(path: Any) -> int | None:
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("max_position_embeddings")
