"""Read one lead, in µV, from an input file: a one-lead ``.npy`` or a DICOM waveform object.

Both the ``convert`` command and the service's worker come through here, so a file is
judged the same way whichever door it came in by.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset

from ecg_dicom.core.preprocess import MAX_DURATION_S, MAX_FS_HZ, check_single_lead
from ecg_dicom.errors import InputError
from ecg_dicom.sidecar import Sidecar, read_sidecar

NPY_MAGIC = b"\x93NUMPY"
DICOM_MAGIC_OFFSET = 128
MAX_NPY_SAMPLES = int(MAX_DURATION_S * MAX_FS_HZ)


@dataclass
class LeadInput:
    """One lead ready for the model.

    signal_uv: (N,) float64 µV; fs: Hz; lead: "I" or "II"; dataset: the source DICOM
    object (None for .npy); content_hash: sha256 hex of the file's bytes (deterministic
    output UIDs for .npy); kind: "npy" or "dicom"; sidecar: what the .npy's sidecar said
    (None without one; see :mod:`ecg_dicom.sidecar`).
    """

    signal_uv: np.ndarray
    fs: float
    lead: str
    dataset: Dataset | None
    content_hash: str
    kind: str
    sidecar: Sidecar | None = None


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_npy_file(path: str | Path) -> bool:
    """True when the file starts with the .npy magic string."""
    with open(path, "rb") as fh:
        return fh.read(len(NPY_MAGIC)) == NPY_MAGIC


def is_dicom_file(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble ("DICM" at byte 128)."""
    with open(path, "rb") as fh:
        fh.seek(DICOM_MAGIC_OFFSET)
        return fh.read(4) == b"DICM"


def looks_like_input(path: Path) -> bool:
    """Whether a file in an input folder is meant as an input: .npy, .dcm, or DICOM by content."""
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() in (".npy", ".dcm", ".dicom"):
        return True
    return is_dicom_file(path)


def read_npy_array(path: str | Path) -> np.ndarray:
    """Load a .npy without pickle, refusing a huge one from its header before reading it."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a readable .npy file: {exc}") from exc
    if dtype.hasobject:
        raise InputError("holds Python objects, not numbers (pickled data is refused)")
    n = int(np.prod(shape)) if shape else 1
    if n > MAX_NPY_SAMPLES:
        raise InputError(f"too large: {n} samples (shape {shape}), at most {MAX_NPY_SAMPLES} for one lead")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable .npy file: {exc}") from exc


def load_lead(path: str | Path, input_lead: str = "I", fs: float = 500.0, units: str = "uV") -> LeadInput:
    """Read ``input_lead`` from ``path`` and check it.

    A .npy is one lead (``(N,)`` or ``(1, N)``) in ``units`` at ``fs`` Hz; a DICOM file is
    recognised by content and read with :func:`ecg_dicom.dicom.reader.read_dicom_lead`
    (its own sampling rate and units). Raises :class:`InputError` with a one-line reason.
    """
    path = Path(path)
    try:
        npy = is_npy_file(path)
        dicom = not npy and (is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom"))
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from exc
    if npy:
        signal = check_single_lead(read_npy_array(path), fs, units)
        return LeadInput(signal, float(fs), input_lead, None, file_sha256(path), "npy")
    if dicom:
        from ecg_dicom.dicom.reader import read_dicom_lead

        lead = read_dicom_lead(path, input_lead)
        signal = check_single_lead(lead.signal_uv, lead.fs, "uV")
        return LeadInput(signal, float(lead.fs), input_lead, lead.dataset, file_sha256(path), "dicom")
    raise InputError("neither a .npy array nor a DICOM file (no NUMPY magic, no DICM preamble)")


def load_input(path: str | Path, input_lead: str, fs: float = 500.0, units: str = "uV",
               sidecar: str | Path | None = None) -> LeadInput:
    """Read one input the way both doors (``serve``, ``convert``) read it: ``path`` plus its
    sidecar file ``sidecar`` (None or missing: no sidecar; see :func:`ecg_dicom.sidecar.sidecar_path`).

    The sidecar's ``fs`` and ``units`` replace the defaults ``fs`` and ``units`` (which apply
    to a ``.npy`` without one); its ``lead`` must be ``input_lead``, the lead the model
    takes; its patient/study keys travel with the result. Raises :class:`InputError`.
    """
    params = read_sidecar(sidecar)
    if params is None:
        return load_lead(path, input_lead, fs, units)
    if params.lead is not None and params.lead != input_lead:
        raise InputError(f"sidecar says lead {params.lead}; the model in use takes lead {input_lead}")
    item = load_lead(path, input_lead, params.fs or fs, params.units or units)
    if item.kind != "npy":
        raise InputError("a sidecar .json belongs to a .npy input; this is a DICOM file, which carries "
                         "its own rate, lead and patient")
    item.sidecar = params
    return item
