"""The README's Python API section, run as a user would paste it (issue 20 item 7: its snippet
failed with NameError: lead_i_uv, and it imported process_and_save_npy_files unexplained)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from conftest import synthetic_lead

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section headed ``section``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{section}\n")
    following = re.search(r"\n#{1,3} ", text[start + len(section) + 2:])
    body = text[start:start + len(section) + 2 + following.start()] if following else text[start:]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_python_api_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    blocks = python_blocks("### Python API")
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    np.save("lead_i.npy", synthetic_lead(10.0, 500.0))           # the file the first block names
    (tmp_path / "ecgs").mkdir()
    for i in range(2):
        np.save(tmp_path / "ecgs" / f"rec{i}.npy", synthetic_lead(10.0, 500.0, seed=i))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)   # noqa: S102 - our own README
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "onnxruntime int8 (12, 5000)"              # the default is the fast path
    assert namespace["leads"].shape == (12, 5000) and namespace["leads"].dtype == np.float32
    assert out[1] == "['rec0', 'rec1'] {}"
    assert np.load(tmp_path / "ecgs-12lead" / "rec0.npy").shape == (12, 5000)
