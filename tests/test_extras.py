"""A plain ``pip install .`` (no extras): the default paths run without torch, and what needs
torch says which extra to install: one line, exit status 2, no traceback.

Each case runs the CLI in a fresh interpreter whose import system cannot find torch, as if it
were not installed (an import hook: a ``sys.modules['torch'] = None`` shim would break scipy,
which looks torch up in ``sys.modules``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, synthetic_lead
from peers import write_config

# runs `ecg-dicom ARGS` with torch (and torch.*) not importable
WITHOUT_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
from ecg_dicom.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)


def test_the_hook_hides_torch() -> None:
    code = WITHOUT_TORCH.replace("from ecg_dicom.cli", "import torch  #")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ModuleNotFoundError: No module named 'torch'" in proc.stderr


def test_default_convert_of_dicom_runs_without_torch(shared_data: Path, tmp_path: Path) -> None:
    proc = without_torch("convert", str(shared_data / "dicom" / "12lead"), str(tmp_path / "out"), "--format", "both")
    assert proc.returncode == 0, proc.stderr
    assert "converted 2, rejected 0" in proc.stderr
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2 and len(list((tmp_path / "out").glob("*.npy"))) == 2


def _checkpoint_without_export(tmp_path: Path) -> Path:
    """The shipped lead-I checkpoint without its .onnx beside it: only torch can run it."""
    path = tmp_path / "alone.pt"
    shutil.copy(REPO_ROOT / "ecg_dicom" / "weights" / "lead_I.pt", path)
    return path


@pytest.mark.parametrize("command, extra", [
    (["convert", "IN", "OUT", "--precision", "fp32"], "torch"),
    (["convert", "IN", "OUT", "--checkpoint", "ALONE"], "torch"),
    (["convert", "IN", "OUT", "--device", "cuda"], "torch"),
    (["evaluate", "IN", "--precision", "fp32"], "torch"),
    (["export", "--out", "OUT/x.onnx"], "export"),
    (["train", "--out", "OUT/x.pt"], "train"),
    (["ensemble", "ALONE", "ALONE", "--out", "OUT/x.pt"], "torch"),
])
def test_without_torch_a_command_that_needs_it_names_the_extra(command: list[str], extra: str,
                                                               tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", synthetic_lead())
    paths = {"IN": str(tmp_path / "in"), "OUT": str(tmp_path / "out"),
             "ALONE": str(_checkpoint_without_export(tmp_path))}
    args = [paths.get(a, a.replace("OUT", paths["OUT"])) for a in command]
    proc = without_torch(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    # one line; a checkpoint without its export is first logged as falling back to torch
    assert len(lines) == (2 if "ALONE" in command and command[0] == "convert" else 1), lines
    assert "needs torch, which is not installed" in lines[-1]
    assert lines[-1].endswith(f"pip install '.[{extra}]' in the ecg-dicom clone")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_serve_without_torch_on_a_checkpoint_without_export_says_so_and_stops(tmp_path: Path) -> None:
    config = write_config(tmp_path / "site", _checkpoint_without_export(tmp_path))
    proc = without_torch("serve", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ecg-dicom serve: reading the checkpoint alone.pt itself")
    assert last.endswith("pip install '.[torch]' in the ecg-dicom clone")
