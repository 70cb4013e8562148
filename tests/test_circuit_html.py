"""`viscnn circuit --out FILE.html` writes the app's standalone snapshot HTML."""

import re

from viscnn.cli import main


def test_circuit_cli_writes_standalone_html(tmp_path, capsys):
    out = tmp_path / "c.html"
    rc = main(["circuit", "--model", "fmnist", "--target", "class:Sneaker", "--images", "fmnist:test:Sneaker:32",
               "--keep", "300", "--random-circuits", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    text = out.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") or "<html" in text[:500].lower()
    assert "class:Sneaker" in text
    assert not re.search(r"""<script[^>]+src=["']https?://""", text), "must work offline: no remote scripts"
    printed = capsys.readouterr().out
    n_edges = int(re.search(r"(\d+) of 7840 kernels", printed).group(1))
    assert 0 < n_edges <= 300 + 64  # --keep counts conv kernels; class-layer kernels (64 per class) come on top
