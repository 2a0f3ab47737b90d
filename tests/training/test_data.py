"""Reading a feedback export: conversions to TRL formats, counts, malformed input, held-out prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import write_export
from training.data import TrainingDataError, load_export, require


def test_demonstrations_become_prompt_completion(tmp_path: Path) -> None:
    data = load_export(
        write_export(tmp_path / "e", demos=3, pairs=2, pairs_test=1, prompts=4, prompts_test=0)
    )
    assert data.counts() == {
        "demonstrations_train": 3,
        "demonstrations_test": 0,
        "pairs_train": 2,
        "pairs_test": 1,
        "prompts_train": 4,
        "prompts_test": 0,
        "ratings_train": 0,  # no unpaired.*.jsonl in this export: no rated answers
        "ratings_test": 0,
    }
    example = data.sft["train"][0]
    assert set(example) == {"prompt", "completion"}  # `meta` dropped
    assert example["prompt"][0]["role"] == "system" and example["prompt"][-1]["role"] == "user"
    assert example["completion"] == [{"role": "assistant", "content": "Paris [1]"}]
    assert set(data.pairs["train"][0]) == {"prompt", "chosen", "rejected"}
    prompts, source = data.eval_prompts()  # no test prompts: the test pairs' prompts
    assert source == "preferences.test prompts" and len(prompts) == 1


def test_malformed_exports_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="not a feedback export"):
        load_export(tmp_path)
    folder = write_export(tmp_path / "e")
    (folder / "sft.train.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n"
    )
    with pytest.raises(TrainingDataError, match="must end with an assistant message"):
        load_export(folder)
    (folder / "sft.train.jsonl").write_text("{not json\n")
    with pytest.raises(TrainingDataError, match=r"sft.train.jsonl:1 is not valid JSON"):
        load_export(folder)


def test_require_names_the_shortfall() -> None:
    require(3, 3, "pairs", "rank more")
    with pytest.raises(TrainingDataError, match=r"too little data: 2 pairs \(need at least 3\)\. rank more"):
        require(2, 3, "pairs", "rank more")
