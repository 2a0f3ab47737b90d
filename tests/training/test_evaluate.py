"""The evaluation gate: SQuAD metrics, win-rate, exact KL, and publish decisions (pass / fail / force)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from evaluation.metrics import squad_exact_match as exact_match
from evaluation.metrics import squad_f1 as f1_score
from training.config import GateSection
from training.evaluate import answer_kl, gate_decision, win_rate


def test_squad_metrics_hand_computed() -> None:
    assert exact_match("The Eiffel Tower [1].", ["eiffel tower"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    # pred {paris, france} vs gold {paris}: precision 1/2, recall 1 -> F1 2/3
    assert f1_score("Paris, France [2]", ["Paris", "Lyon"]) == pytest.approx(2 / 3)
    assert f1_score("", ["Paris"]) == 0.0


def test_win_rate_counts_ties_half() -> None:
    assert win_rate([1.0, 0.0, 2.0, 5.0], [0.5, 0.5, 2.0, 1.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits at every position are one fixed row (vocab 3)."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)
        self.device = torch.device("cpu")

    def forward(self, input_ids: torch.Tensor):
        logits = self.row.expand(input_ids.shape[0], input_ids.shape[1], 3)
        return type("Out", (), {"logits": logits})()


def test_answer_kl_is_exact_over_the_vocabulary() -> None:
    p = torch.softmax(torch.tensor([2.0, 0.0, -1.0]), -1)
    q = torch.softmax(torch.tensor([0.0, 0.0, 0.0]), -1)
    per_token = float((p * (p.log() - q.log())).sum())
    kl = answer_kl(FixedLogits([2.0, 0.0, -1.0]), FixedLogits([0.0, 0.0, 0.0]), [0, 1, 2], [1, 1, 0])
    assert kl == pytest.approx(3 * per_token, rel=1e-5)  # summed over the 3 answer tokens
    assert answer_kl(
        FixedLogits([1.0, 2.0, 3.0]), FixedLogits([1.0, 2.0, 3.0]), [0], [1, 2]
    ) == pytest.approx(0.0, abs=1e-7)


def test_gate_passes_fails_and_force_is_recorded() -> None:
    gate = GateSection(min_win_rate=0.5, max_kl=2.0)
    good = {"win_rate": 0.75, "kl": 1.5}
    decision = gate_decision(good, gate)
    assert decision["passed"] and decision["publish"] and not decision["forced"]
    assert decision["reasons"] == ["ok: win_rate 0.75 >= 0.5", "ok: kl 1.5 <= 2"]

    drifted = {"win_rate": 0.75, "kl": 3.0}
    decision = gate_decision(drifted, gate)
    assert not decision["passed"] and not decision["publish"]
    assert "FAILED: kl 3 > 2" in decision["reasons"]

    forced = gate_decision(drifted, gate, force=True)
    assert forced["publish"] and forced["forced"] and not forced["passed"]
    assert forced["reasons"][-1] == "published anyway: --force"

    unmeasured = gate_decision({"win_rate": None, "kl": 0.1}, gate)
    assert (
        not unmeasured["publish"]
        and "FAILED: win_rate not measured (no reward model)" in unmeasured["reasons"]
    )
    nan = gate_decision({"win_rate": math.nan, "kl": 0.1}, gate)
    assert not nan["passed"]
    assert gate_decision({}, GateSection(min_win_rate=None, max_kl=None))["reasons"] == [
        "no gate criteria configured"
    ]


def test_evaluate_candidate_against_itself(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    """The same model as candidate and current: KL 0, equal lengths, and with a QA file EM/F1 per model."""
    import json

    from tests.training.conftest import prompt_for
    from training.evaluate import evaluate_candidate

    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps(
            {"question": "Who wrote Hamlet?", "answers": ["Shakespeare"], "context": "By Shakespeare."}
        )
        + "\n"
    )
    cfg = tiny_cfg(f"gate.qa_file={qa}")
    metrics = evaluate_candidate(
        cfg,
        candidate_dir=tiny_model_dir,
        current_dir=tiny_model_dir,
        reward_dir=None,
        prompts=[prompt_for(0), prompt_for(1)],
        out_dir=tmp_path / "ev",
    )
    assert metrics["prompts"] == 2 and metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["candidate"]["mean_length"] == metrics["current"]["mean_length"] > 0
    assert metrics["win_rate"] is None and metrics["qa_examples"] == 1 and metrics["f1_delta"] == 0.0
    assert len((tmp_path / "ev" / "samples.jsonl").read_text().splitlines()) == 2
