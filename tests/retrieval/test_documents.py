from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.documents import FoundFile, extract_text, read_bytes, walk_files
from retrieval.errors import DocumentSkipped


def hand_written_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF (Helvetica text, one line per page) with a correct xref table."""
    n = len(pages)
    font_id = 3 + 2 * n
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{3 + 2 * i} 0 R".encode() for i in range(n))
        + b"] /Count "
        + str(n).encode()
        + b" >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{num} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def load(tmp_path: Path, name: str, data: bytes, max_bytes: int = 10**6) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return extract_text(read_bytes(FoundFile(path, name), max_bytes))


def test_pdf_text_by_page(tmp_path: Path) -> None:
    text = load(
        tmp_path, "a.pdf", hand_written_pdf(["The moon base Selene holds 40 people.", "Page two here."])
    )
    assert "Selene holds 40 people" in text and "Page two here" in text
    assert text.index("Selene") < text.index("Page two")


def test_pdf_without_text_and_broken_pdf(tmp_path: Path) -> None:
    empty_page = hand_written_pdf([""]).replace(b"() Tj", b"")
    with pytest.raises(DocumentSkipped, match="no extractable text"):
        load(tmp_path, "scan.pdf", empty_page)
    with pytest.raises(DocumentSkipped, match="PDF could not be parsed"):
        load(tmp_path, "bad.pdf", b"%PDF-1.7\nthis is not really a pdf")


def test_html_drops_scripts_and_styles(tmp_path: Path) -> None:
    html = (
        "<html><head><title>T</title><style>body { color: red }</style>"
        "<script>var leaked = 'SECRET_TOKEN';</script></head>"
        "<body><h1>Harbour guide</h1><p>The harbour opens at <b>dawn</b>.</p>"
        "<script>alert('SECRET_TOKEN')</script><noscript>enable JS</noscript><p>Second paragraph.</p></body></html>"
    )
    text = load(tmp_path, "page.html", html.encode())
    assert "SECRET_TOKEN" not in text and "color" not in text and "enable JS" not in text
    assert "Harbour guide" in text and "Second paragraph." in text and "dawn" in text


def test_utf8_bom_and_invalid(tmp_path: Path) -> None:
    assert load(tmp_path, "bom.md", "\ufeffCaf\u00e9".encode()) == "Caf\u00e9"
    with pytest.raises(DocumentSkipped, match="not valid UTF-8"):
        load(tmp_path, "bad.txt", b"caf\xe9")
    with pytest.raises(DocumentSkipped, match="binary"):
        load(tmp_path, "nul.md", b"text\x00more")
    with pytest.raises(DocumentSkipped, match="too large"):
        load(tmp_path, "big.txt", b"a" * 101, max_bytes=100)


def test_walk_skips_hidden_and_sorts(tmp_path: Path) -> None:
    for rel in ["b/z.md", "a.md", ".git/config", "b/.hidden.md", "c.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    found = [f.relpath for f, skip in walk_files(tmp_path) if f is not None]
    assert found == ["a.md", "c.txt", "b/z.md"]  # a folder's files first, then its subfolders
