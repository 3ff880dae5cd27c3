"""Read one input, whatever its format, as a :class:`LeadInput`: one module per format
(``npy``, ``dicom``), each giving the same LeadInput; :mod:`.base` holds it and the
signal-quality gate.

Both the ``convert`` command and the service's worker come through :func:`load_input`, so a
file is judged the same way whichever door it came in by.
"""

from __future__ import annotations

import os
from pathlib import Path

from ecg_dicom.errors import InputError
from ecg_dicom.files import file_sha256
from ecg_dicom.inputs.base import QUALITY_LISTENERS, LeadInput, gate, gate_many, refuse_links
from ecg_dicom.inputs.dicom import DICOM_MAGIC_OFFSET, is_dicom_file, read_dicom_input
from ecg_dicom.inputs.npy import NPY_MAGIC, _NPY_HEADER_ERRORS, _npy_data_bytes, _npy_header, is_npy_file, \
    read_npy_array, read_npy_input
from ecg_dicom.limits import DEFAULT_LIMITS, Limits, check_input_bytes
from ecg_dicom.sidecar import read_sidecar

__all__ = ["QUALITY_LISTENERS", "LeadInput", "file_sha256", "gate", "gate_many", "incomplete_reason", "is_dicom_file",
           "is_npy_file", "load_input", "load_lead", "looks_like_input", "read_npy_array", "refuse_links"]


def looks_like_input(path: Path) -> bool:
    """Whether a file in an input folder is meant as an input: .npy, .dcm, or DICOM by content."""
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() in (".npy", ".dcm", ".dicom"):
        return True
    return is_dicom_file(path)


def incomplete_reason(path: str | Path) -> str | None:
    """Why ``path`` looks cut short, or None.

    A ``.npy`` (by its magic, or the start of it) with fewer bytes than its header declares,
    or ending inside its header; a DICOM file that ends inside an element
    (:func:`ecg_dicom.dicom.reader.truncation`). Anything else, complete or corrupt, is None:
    this answers only "is more of it probably still coming?".
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(len(NPY_MAGIC) + 4)
            if not head:
                return "empty"
            if len(head) < len(NPY_MAGIC) and NPY_MAGIC.startswith(head):
                return "shorter than the .npy magic"
            if head.startswith(NPY_MAGIC):
                if len(head) < len(NPY_MAGIC) + 4:
                    return "ends inside the .npy header"
                major = head[len(NPY_MAGIC)]
                length = int.from_bytes(head[8:10] if major == 1 else head[8:12], "little")
                if size < (10 if major == 1 else 12) + length:
                    return "ends inside the .npy header"
                fh.seek(0)
                try:
                    shape, dtype, offset = _npy_header(fh)
                except _NPY_HEADER_ERRORS:
                    return None  # corrupt, not incomplete: the worker says why
                if not dtype.hasobject and size < offset + _npy_data_bytes(shape, dtype):
                    return f"holds {size} of the {offset + _npy_data_bytes(shape, dtype)} bytes its .npy header declares"
                return None
    except OSError:
        return None
    if size >= DICOM_MAGIC_OFFSET + 4 and is_dicom_file(path):
        from ecg_dicom.dicom.reader import truncation

        return truncation(path)
    return None


def load_lead(path: str | Path, input_lead: str = "I", fs: float = 500.0, units: str = "uV",
              limits: Limits = DEFAULT_LIMITS, gated: bool = True, rows: tuple[str, ...] | None = None) -> LeadInput:
    """Read ``input_lead`` from ``path`` and check it.

    A .npy is one lead (``(N,)`` or ``(1, N)``) in ``units`` at ``fs`` Hz, or ``(K, N)`` with
    ``rows`` naming its leads (the two-lead model takes (2, N), I and II); a DICOM file is
    recognised by content and read with :func:`ecg_dicom.dicom.reader.read_dicom_lead`
    (its own sampling rate and units). Inputs beyond ``limits`` are refused before they are
    decoded. The lead then passes the signal-quality gate (:func:`gate`), unless ``gated`` is
    False: then the caller gates it (:func:`gate_many`, for a batch). Raises
    :class:`InputError` (:class:`SignalQualityError` from the gate) with a one-line reason.
    """
    path = Path(path)
    try:
        check_input_bytes(os.stat(path).st_size, limits)
        npy = is_npy_file(path)
        dicom = not npy and (is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom"))
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from exc
    if npy:
        item = read_npy_input(path, input_lead, fs, units, limits, rows)
    elif dicom:
        item = read_dicom_input(path, input_lead, limits)
    else:
        raise InputError("neither a .npy array nor a DICOM file (no NUMPY magic, no DICM preamble)")
    if gated:
        item.quality = gate(item.signal_uv, item.fs)
    return item


def load_input(path: str | Path, input_lead: str, fs: float = 500.0, units: str = "uV",
               sidecar: str | Path | None = None, limits: Limits = DEFAULT_LIMITS,
               gated: bool = True) -> LeadInput:
    """Read one input the way both doors (``serve``, ``convert``) read it: ``path`` plus its
    sidecar file ``sidecar`` (None or missing: no sidecar; see :func:`ecg_dicom.sidecar.sidecar_path`).

    The sidecar's ``fs`` and ``units`` replace the defaults ``fs`` and ``units`` (which apply
    to a ``.npy`` without one); its ``lead`` must be ``input_lead``, the lead the model
    takes; its patient/study keys travel with the result. ``gated``: see :func:`load_lead`.
    Raises :class:`InputError`.
    """
    params = read_sidecar(sidecar)
    if params is None:
        return load_lead(path, input_lead, fs, units, limits, gated)
    if params.lead is not None and params.lead != input_lead:
        raise InputError(f"sidecar says lead {params.lead}; the model in use takes lead {input_lead}")
    item = load_lead(path, input_lead, params.fs or fs, params.units or units, limits, gated, params.leads)
    if item.kind != "npy":
        raise InputError("a sidecar .json belongs to a .npy input; this is a DICOM file, which carries "
                         "its own rate, lead and patient")
    item.sidecar = params
    return item
