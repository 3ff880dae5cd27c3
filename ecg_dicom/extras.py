"""The optional extras of pyproject.toml: which of them brings a module, and the one line that
says how to install a missing one.

A plain ``pip install .`` runs every default path (convert, serve, evaluate on the fast path:
ONNX Runtime); torch and the rest come with an extra. No package index carries ecg-dicom, so
the hint installs from the clone.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from ecg_dicom.errors import MissingExtraError

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF_MODULE = {
    "torch": "torch",
    "onnx": "export",
    "onnxscript": "export",
    "deepfakeecg": "train",
    "ray": "scale",
}


def install_hint(extra: str) -> str:
    """``pip install '.[extra]'`` and where to run it."""
    return f"pip install '.[{extra}]' in the ecg-dicom clone"


def missing_extra(module: str, needed_for: str, extra: str | None = None) -> MissingExtraError:
    """The error for ``module`` missing when ``needed_for`` (words) needs it; ``extra``: the one
    to install (default: the extra that brings ``module``)."""
    extra = extra or EXTRA_OF_MODULE[module]
    return MissingExtraError(f"{needed_for} needs {module}, which is not installed: {install_hint(extra)}")


def missing_module(exc: ModuleNotFoundError) -> str | None:
    """The top-level module an optional extra brings that ``exc`` says is missing, else None."""
    name = (exc.name or "").split(".")[0]
    return name if name in EXTRA_OF_MODULE else None


def require(module: str, needed_for: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (a key of :data:`EXTRA_OF_MODULE`), or raise :class:`MissingExtraError`
    naming the extra that installs it."""
    try:
        return import_module(module)
    except ModuleNotFoundError as exc:
        if missing_module(exc) != module:  # installed, but something it needs is not
            raise
        raise missing_extra(module, needed_for, extra) from None
