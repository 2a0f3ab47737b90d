"""End to end with the real offline defaults: ingest documents written for the test, ask, check sources and citations.

Uses the real SmolLM2-135M (converted once per session) and the real all-MiniLM-L6-v2 embedder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.config import AppConfig
from app.qa import QAService

# Facts no model knows: made up for this test.
DOCS = {
    "kelvale/tower.md": "# The Zorbium Tower\n\nThe Zorbium Tower in Kelvale opened on 14 March 1893. "
    "It is 212 metres tall and was designed by the engineer Alma Pettersen.",
    "recipes/quillbread.txt": "Quillbread is baked from fermented oat flour and blue sorrel. "
    "The dough rests for nine hours before it is baked at 190 degrees.",
    "ships/marigold.md": "The research ship Marigold Vance carries a crew of 31 and was launched from Tessport "
    "in 2011. Its home port is Orrin Bay.",
    "birds/glimwing.rst": "Glimwing\n========\n\nThe glimwing is a small grey bird that nests only on the cliffs "
    "of Hallow Isle. It lays two pale green eggs each spring.",
}

QUESTIONS = [
    ("When did the Zorbium Tower open?", "kelvale/tower.md", "1893"),
    ("How long does quillbread dough rest?", "recipes/quillbread.txt", "nine"),
    ("How many crew does the Marigold Vance carry?", "ships/marigold.md", "31"),
    ("Where does the glimwing nest?", "birds/glimwing.rst", "Hallow"),
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_ingest_and_ask_with_the_real_defaults(default_registry: Path, corpus: Path, capsys) -> None:
    assert main(["ingest", str(corpus)]) == 0
    assert "4 new" in capsys.readouterr().out
    qa = QAService(AppConfig.load(max_new_tokens=48))
    stated = 0
    for question, source, fact in QUESTIONS:
        result = qa.ask(question)
        assert result.passages[0].source == source, (question, [p.source for p in result.passages])
        assert result.model_version == "v0001"
        assert set(result.timings_ms) == {"retrieve", "first_token", "total"}
        stated += fact.lower() in result.answer.lower()
        if fact.lower() in result.answer.lower():
            # An answer that states the fact must point at the passage it came from.
            assert 1 in result.cited, (question, result.answer, result.cited)
    assert stated >= 2, "the default model should state most of these facts"


def test_ask_json_cli(default_registry: Path, corpus: Path, capsys) -> None:
    assert main(["ingest", str(corpus)]) == 0
    capsys.readouterr()
    assert main(["ask", "--json", "-k", "2", "When did the Zorbium Tower open?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"answer", "sources", "cited", "model_version", "timings_ms"}
    assert [s["rank"] for s in out["sources"]] == [1, 2]
    assert out["sources"][0]["source"] == "kelvale/tower.md"
    assert set(out["sources"][0]) >= {"rank", "source", "chunk_id", "score", "text"}
    assert set(out["timings_ms"]) == {"retrieve", "first_token", "total"}


def test_follow_up_uses_the_conversation(default_registry: Path, corpus: Path) -> None:
    assert main(["ingest", str(corpus)]) == 0
    qa = QAService(AppConfig.load(max_new_tokens=8))
    history = [
        {"role": "user", "content": "Who designed the Zorbium Tower?"},
        {"role": "assistant", "content": "Alma Pettersen."},
    ]
    passages = qa.retrieve("and when did it open?", history)
    assert passages[0].source == "kelvale/tower.md"
    # A change of topic is searched alone (retrieval/followup.py): the old topic does not come first.
    passages = qa.retrieve("How long does quillbread dough rest before baking?", history)
    assert passages[0].source == "recipes/quillbread.txt"


def test_long_passages_are_trimmed_to_the_prompt_limit(default_registry: Path, tmp_path: Path) -> None:
    """Above `max_prompt_tokens` the model reads (and the Sources panel shows) the passages' relevant sentences:
    the real tokenizer's prompt stays within the limit, and the sentence with the answer is among them."""
    filler = " ".join(
        f"Visitors in year {y} mostly came by train and stayed one night." for y in range(1950, 1975)
    )
    root = tmp_path / "long"
    root.mkdir()
    (root / "tower.md").write_text(f"{filler} The Zorbium Tower in Kelvale opened on 14 March 1893. {filler}")
    (root / "bread.md").write_text(f"Quillbread is baked from oat flour. {filler}")
    assert main(["ingest", str(root)]) == 0
    question = "When did the Zorbium Tower open?"
    trimmed = QAService(AppConfig.load(max_new_tokens=8, max_prompt_tokens=320)).ask(question)
    assert trimmed.generation["prompt_tokens"] <= 320
    assert any("opened on 14 March 1893" in p.text for p in trimmed.passages)
    assert any("…" in p.text for p in trimmed.passages)
    whole = QAService(AppConfig.load(max_new_tokens=8, max_prompt_tokens="off")).ask(question)
    assert whole.generation["prompt_tokens"] > 600 and not any("…" in p.text for p in whole.passages)
