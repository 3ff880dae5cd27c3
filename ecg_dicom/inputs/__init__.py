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
from ecg_dicom.core.leadchoice import AUTO, model_leads
from ecg_dicom.inputs.base import QUALITY_LISTENERS, LeadInput, choose_lead, gate, gate_many, refuse_links
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
              limits: Limits = DEFAULT_LIMITS, gated: bool = True,
              models: tuple[str, ...] | None = None) -> LeadInput:
    """Read ``input_lead`` from ``path`` and check it.

    ``input_lead`` "auto": a source holding several leads gives the lead the model does best
    from, among the inputs ``models`` names (default: every one auto knows), chosen and gated
    here whatever ``gated`` says (:func:`ecg_dicom.inputs.base.choose_lead`); a one-lead
    source gives lead I.

    A .npy is one lead (``(N,)`` or ``(1, N)``) in ``units`` at ``fs`` Hz; a DICOM file is
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
    auto = input_lead == AUTO
    if npy:
        item = read_npy_input(path, "I" if auto else input_lead, fs, units, limits)
    elif dicom:
        item = _read_dicom_auto(path, limits) if auto else read_dicom_input(path, input_lead, limits)
    else:
        raise InputError("neither a .npy array nor a DICOM file (no NUMPY magic, no DICM preamble)")
    if auto and item.source_leads:
        return choose_lead(item, models if models is not None else model_leads(AUTO))
    if gated:
        item.quality = gate(item.signal_uv, item.fs, item.lead)
    return item


def _read_dicom_auto(path: Path, limits: Limits) -> LeadInput:
    """A DICOM source read for ``auto``: its lead I, else its lead II (the refusal of lead I
    when it holds neither)."""
    from ecg_dicom.errors import WaveformError

    try:
        return read_dicom_input(path, "I", limits)
    except WaveformError as first:
        if not str(first).startswith("no lead I "):
            raise
        try:
            return read_dicom_input(path, "II", limits)
        except WaveformError:
            raise first from None


def load_input(path: str | Path, input_lead: str, fs: float = 500.0, units: str = "uV",
               sidecar: str | Path | None = None, limits: Limits = DEFAULT_LIMITS,
               gated: bool = True, models: tuple[str, ...] | None = None) -> LeadInput:
    """Read one input the way both doors (``serve``, ``convert``) read it: ``path`` plus its
    sidecar file ``sidecar`` (None or missing: no sidecar; see :func:`ecg_dicom.sidecar.sidecar_path`).

    The sidecar's ``fs`` and ``units`` replace the defaults ``fs`` and ``units`` (which apply
    to a ``.npy`` without one); its ``lead`` must be ``input_lead``, the lead the model
    takes (with ``auto``: one of ``models``, the lead read); its patient/study keys travel with
    the result. ``gated``, ``models``: see :func:`load_lead`. Raises :class:`InputError`.
    """
    params = read_sidecar(sidecar)
    if params is None:
        return load_lead(path, input_lead, fs, units, limits, gated, models)
    if input_lead == AUTO and params.lead is not None:
        if params.lead not in (models if models is not None else model_leads(AUTO)):
            raise InputError(f"sidecar says lead {params.lead}; no model for it is loaded")
        input_lead = params.lead
    if params.lead is not None and params.lead != input_lead:
        raise InputError(f"sidecar says lead {params.lead}; the model in use takes lead {input_lead}")
    item = load_lead(path, input_lead, params.fs or fs, params.units or units, limits, gated, models)
    if item.kind != "npy":
        raise InputError("a sidecar .json belongs to a .npy input; this is a DICOM file, which carries "
                         "its own rate, lead and patient")
    item.sidecar = params
    return item
