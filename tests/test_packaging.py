"""The pins CI installs with: every line a released version from the index, so a fresh machine
resolves exactly what the suite passed with (a local wheel path once slipped in from a venv)."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def test_every_pin_names_a_released_version_from_the_index() -> None:
    lines = [line.strip() for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith("#")]
    bad = [line for line in pins if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*==[0-9][0-9A-Za-z.!+-]*", line)]
    assert bad == []
    names = {line.split("==")[0].lower().replace("_", "-") for line in pins}
    assert {"torch", "onnxruntime", "pydicom", "pynetdicom", "numpy", "defusedxml", "dicomweb-client"} <= names
