"""The one-lead ``.npy`` input: read without pickle, refused from its header when huge,
recognised as cut short when it holds fewer bytes than its header declares."""

from __future__ import annotations

import os
import tokenize
from pathlib import Path

import numpy as np

from ecg_dicom.core.preprocess import check_single_lead
from ecg_dicom.errors import InputError
from ecg_dicom.files import file_sha256
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.leads import input_leads_of
from ecg_dicom.limits import DEFAULT_LIMITS, Limits
from ecg_dicom.logsafe import wire

NPY_MAGIC = b"\x93NUMPY"
# What numpy's header parser raises on a corrupt header (it evaluates a Python literal)
_NPY_HEADER_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, RecursionError,
                      MemoryError, TypeError, OverflowError, UnicodeError)


def is_npy_file(path: str | Path) -> bool:
    """True when the file starts with the .npy magic string."""
    with open(path, "rb") as fh:
        return fh.read(len(NPY_MAGIC)) == NPY_MAGIC


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from an open .npy; raises one of _NPY_HEADER_ERRORS."""
    version = np.lib.format.read_magic(fh)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(fh)
    return shape, dtype, fh.tell()


def _npy_data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return (int(np.prod(shape, dtype=object)) if shape else 1) * dtype.itemsize


def read_npy_array(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Load a .npy without pickle, refusing a huge one from its header before reading it,
    and a truncated one (fewer bytes than its header declares) with a reason that says so."""
    try:
        with open(path, "rb") as fh:
            shape, dtype, offset = _npy_header(fh)
            size = os.fstat(fh.fileno()).st_size
    except _NPY_HEADER_ERRORS as exc:
        raise InputError(f"not a readable .npy file: corrupt header ({type(exc).__name__}: {wire(exc)})") from None
    if dtype.hasobject:
        raise InputError("holds Python objects, not numbers (pickled data is refused)")
    if dtype.kind not in "iuf":
        raise InputError(f"not a numeric array (dtype kind {dtype.kind!r}): one lead of numbers expected")
    n = int(np.prod(shape, dtype=object)) if shape else 1
    if (shape[-1] if len(shape) == 2 and 0 < shape[0] <= 2 else n) > limits.max_samples_per_channel:
        raise InputError(f"too large: {n} samples (shape {shape}), at most {limits.max_samples_per_channel} "
                         "for one lead (limits.max_samples_per_channel)")
    if size < offset + _npy_data_bytes(shape, dtype):
        raise InputError(f"truncated .npy: its header declares {n} samples ({offset + _npy_data_bytes(shape, dtype)}"
                         f" bytes) but the file has {size} bytes (cut short, or taken while still being written:"
                         " drop a file by writing it elsewhere or as NAME.part, then renaming it)")
    try:
        return np.load(path, allow_pickle=False)
    except _NPY_HEADER_ERRORS as exc:
        raise InputError(f"not a readable .npy file: {type(exc).__name__}: {wire(exc)}") from None




def read_npy_input(path: Path, input_lead: str, fs: float, units: str, limits: Limits = DEFAULT_LIMITS,
                   rows: tuple[str, ...] | None = None) -> LeadInput:
    """A one-lead ``.npy`` (``(N,)`` or ``(1, N)``) in ``units`` at ``fs`` Hz, checked, not gated.

    ``rows``: the sidecar's ``leads``, naming the rows of a ``(K, N)`` array; the model's
    lead(s) are taken from it: ``(2, N)`` (I, II) for the two-lead model ``I+II``, which needs
    them (a two-lead array without its sidecar ``leads`` is refused: its rows could be anything).
    Every row is checked; a bad one is refused naming its lead.
    """
    array = read_npy_array(path, limits)
    wanted = input_leads_of(input_lead)
    if rows is None:
        if len(wanted) > 1:
            raise InputError(f"the {input_lead} model takes both leads: a ({len(wanted)}, N) .npy with a sidecar"
                             f' naming its rows, {{"leads": ["I", "II"]}}')
        return LeadInput(check_single_lead(array, fs, units), float(fs), input_lead, None, file_sha256(path), "npy")
    if array.ndim == 1 and len(rows) == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] != len(rows):
        raise InputError(f"shape {tuple(array.shape)} does not match the sidecar's {len(rows)} leads"
                         f" ({', '.join(rows)}): expected ({len(rows)}, N)")
    missing = [lead for lead in wanted if lead not in rows]
    if missing:
        raise InputError(f"the sidecar names leads {', '.join(rows)}; the model in use takes"
                         f" {' and '.join(wanted)} (no lead {missing[0]})")
    checked = {}
    for name, row in zip(rows, array):
        try:
            checked[name] = check_single_lead(row, fs, units)
        except InputError as exc:
            raise InputError(f"lead {name}: {exc}") from None
    signal = checked[wanted[0]] if len(wanted) == 1 else np.stack([checked[lead] for lead in wanted])
    return LeadInput(signal, float(fs), input_lead, None, file_sha256(path), "npy",
                     source_leads=checked if len(rows) > 1 else None)
