"""benchmarks/passages_k.py: the prompts it times are the ones the eval answered from (no model runs here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.passages_k import eval_folder, journal_prompts, parse_variants, variant_name
from benchmarks.starter_heldout import run_eval


class TextTokenizer:
    """Encodes the user turn as its characters' code points, so a test can read the prompt back."""

    def apply_chat_template(self, messages, **_kwargs):
        return [ord(c) for c in messages[-1]["content"]]


def _passage(rank: int, text: str) -> dict:
    return {"rank": rank, "chunk_id": f"c{rank}", "source": f"doc{rank}.md", "text": text, "score": 1.0}


def test_journal_prompts_render_each_question_with_its_own_passages(tmp_path: Path) -> None:
    lines = [{"journal": 1, "options": {"k": 2}}]
    for n, (question, texts) in enumerate(
        [("Who built it?", ["Ada built it.", "Noise."]), ("When?", ["In 1900."])]
    ):
        passages = [_passage(i + 1, t) for i, t in enumerate(texts)]
        lines.append({"n": n, "record": {"question": question, "passages": passages}})
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    prompts = ["".join(map(chr, p)) for p in journal_prompts(tmp_path, TextTokenizer(), 5)]
    assert len(prompts) == 2
    assert "Who built it?" in prompts[0] and "Ada built it." in prompts[0] and "Noise." in prompts[0]
    assert "When?" in prompts[1] and "In 1900." in prompts[1] and "Ada" not in prompts[1]
    assert len(journal_prompts(tmp_path, TextTokenizer(), 1)) == 1


def test_run_eval_passes_k_only_when_given(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr("subprocess.run", lambda cmd, **_k: calls.append(cmd))
    run_eval(tmp_path / "qa.json", "v0002", 10, tmp_path / "out", 4, {}, k=2)
    run_eval(tmp_path / "qa.json", "v0002", 10, tmp_path / "out", 4, {})
    run_eval(tmp_path / "qa.json", "v0002", 10, tmp_path / "out", 4, {}, k=4, max_prompt_tokens="448")
    assert calls[0][calls[0].index("-k") + 1] == "2"
    assert "-k" not in calls[1] and "--max-prompt-tokens" not in calls[1]
    assert calls[2][calls[2].index("--max-prompt-tokens") + 1] == "448"


def test_variants_name_their_own_eval_folders(tmp_path: Path) -> None:
    assert parse_variants("4:off, 4:448,2") == [(4, "off"), (4, "448"), (2, "off")]
    assert [variant_name(*v) for v in parse_variants("4:off,4:448")] == ["k4", "k4-p448"]
    # k4 keeps the folder name of the runs before variants existed; a trimmed run never resumes an untrimmed one
    assert eval_folder(tmp_path, "v0002", 4) == tmp_path / "squad2-v0002-k4"
    assert eval_folder(tmp_path, "v0002", 4, "448") != eval_folder(tmp_path, "v0002", 4, "off")
