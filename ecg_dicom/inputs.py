"""Read one lead, in µV, from an input file: a one-lead ``.npy`` or a DICOM waveform object.

Both the ``convert`` command and the service's worker come through here, so a file is
judged the same way whichever door it came in by.
"""

from __future__ import annotations

import logging
import os
import stat
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ecg_dicom.core.preprocess import check_single_lead
from ecg_dicom.core.quality import QualityReport, assess_quality, assess_quality_many
from ecg_dicom.errors import InputError, SignalQualityError
from ecg_dicom.files import file_sha256
from ecg_dicom.limits import DEFAULT_LIMITS, Limits, check_input_bytes
from ecg_dicom.logsafe import wire
from ecg_dicom.sidecar import Sidecar, read_sidecar

if TYPE_CHECKING:  # pydicom is imported only when a DICOM input is read (~0.3 s)
    from pydicom import Dataset

NPY_MAGIC = b"\x93NUMPY"
DICOM_MAGIC_OFFSET = 128
# What numpy's header parser raises on a corrupt header (it evaluates a Python literal)
_NPY_HEADER_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, RecursionError,
                      MemoryError, TypeError, OverflowError, UnicodeError)
LOG = logging.getLogger("ecg_dicom.inputs")

# Called with every signal-quality verdict, from both doors (convert and the service): the
# hook for counters such as the service's metrics (rejections and warnings by flag).
QUALITY_LISTENERS: list[Callable[[QualityReport], None]] = []


# where a lead's sampling rate came from (the result's .json "fs_source", the page)
FS_FROM_DICOM = "DICOM header"
FS_FROM_SIDECAR = "sidecar"
FS_GIVEN = "given (--fs)"
FS_ASSUMED = "assumed (no sidecar)"
NPY_DEFAULT_FS = 500.0  # Hz: the rate of a .npy nothing says the rate of


@dataclass
class LeadInput:
    """One lead ready for the model.

    signal_uv: (N,) float64 µV; fs: Hz; lead: "I" or "II"; dataset: the source DICOM
    object (None for .npy); content_hash: sha256 hex of the file's bytes (deterministic
    output UIDs for .npy); kind: "npy" or "dicom"; sidecar: what the .npy's sidecar said
    (None without one; see :mod:`ecg_dicom.sidecar`); quality: the signal-quality gate's
    verdict on the lead ("ok" or "warn": a rejected lead never becomes a LeadInput);
    fs_source: where ``fs`` came from (:data:`FS_FROM_DICOM`, :data:`FS_FROM_SIDECAR`,
    :data:`FS_GIVEN` or :data:`FS_ASSUMED`).
    """

    signal_uv: np.ndarray
    fs: float
    lead: str
    dataset: Dataset | None
    content_hash: str
    kind: str
    sidecar: Sidecar | None = None
    quality: QualityReport | None = None
    fs_source: str = ""

    @property
    def fs_assumed(self) -> bool:
        """True when nothing said the rate: a .npy without a sidecar's ``fs`` or an ``--fs``."""
        return self.fs_source == FS_ASSUMED


def refuse_links(path: str | Path) -> None:
    """Refuse anything but a regular file at ``path`` itself (a symbolic link is not
    followed, its target never read). Raises InputError."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        raise InputError("a symbolic link, refused: only regular files are taken (its target was not read)")
    if not stat.S_ISREG(mode):
        raise InputError("not a regular file, refused")


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
    if n > limits.max_samples_per_channel:
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


def load_lead(path: str | Path, input_lead: str = "I", fs: float = NPY_DEFAULT_FS, units: str = "uV",
              limits: Limits = DEFAULT_LIMITS, gated: bool = True, fs_source: str = FS_GIVEN) -> LeadInput:
    """Read ``input_lead`` from ``path`` and check it.

    A .npy is one lead (``(N,)`` or ``(1, N)``) in ``units`` at ``fs`` Hz; a DICOM file is
    recognised by content and read with :func:`ecg_dicom.dicom.reader.read_dicom_lead`
    (its own sampling rate and units). ``fs_source`` says where a .npy's ``fs`` came from
    (:attr:`LeadInput.fs_source`). Inputs beyond ``limits`` are refused before they are
    decoded. The lead then passes the signal-quality gate (:func:`gate`), unless ``gated`` is
    False: then the caller gates it (:func:`gate_many`, for a batch). Raises
    :class:`InputError` (:class:`SignalQualityError` from the gate) with a one-line reason.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        check_input_bytes(size, limits)
        npy = is_npy_file(path)
        dicom = not npy and (is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom"))
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from exc
    if size == 0:
        raise InputError("empty file (0 bytes)")
    if npy:
        signal = check_single_lead(read_npy_array(path, limits), fs, units)
        return LeadInput(signal, float(fs), input_lead, None, file_sha256(path), "npy",
                         quality=gate(signal, fs) if gated else None, fs_source=fs_source)
    if dicom:
        from ecg_dicom.dicom.reader import read_dicom_lead

        lead = read_dicom_lead(path, input_lead, limits)
        signal = check_single_lead(lead.signal_uv, lead.fs, "uV")
        return LeadInput(signal, float(lead.fs), input_lead, lead.dataset, file_sha256(path), "dicom",
                         quality=gate(signal, lead.fs) if gated else None, fs_source=FS_FROM_DICOM)
    raise InputError("neither a .npy array nor a DICOM file (no NUMPY magic, no DICM preamble)")


def gate(signal_uv: np.ndarray, fs: float) -> QualityReport:
    """Run the signal-quality gate on a checked lead; raise SignalQualityError on "reject"."""
    return _verdict(assess_quality(signal_uv, fs))


def _verdict(report: QualityReport) -> QualityReport:
    """Tell the listeners of a gate verdict; raise SignalQualityError on "reject"."""
    for listener in QUALITY_LISTENERS:
        try:
            listener(report)
        except Exception:  # a counter must never cost an input
            LOG.exception("quality listener failed")
    if report.status == "reject":
        raise SignalQualityError(report.reason)
    return report


def gate_many(leads: Sequence[LeadInput]) -> list[InputError | None]:
    """The signal-quality gate of :func:`gate` on a batch of leads read with ``gated=False``,
    measured together (:func:`ecg_dicom.core.quality.assess_quality_many`: ~2x less CPU per
    10 s ECG than one at a time). Sets each accepted lead's ``quality``; returns, per lead,
    None or the error that refuses it (a SignalQualityError; an InputError naming the failure
    if the gate itself failed on that lead, which then costs no other lead)."""
    try:
        reports: list[QualityReport] | None = assess_quality_many([lead.signal_uv for lead in leads],
                                                                   [lead.fs for lead in leads])
    except Exception:  # noqa: BLE001 - one lead breaking the batch: gate each on its own
        LOG.exception("signal-quality gate failed on a batch of %d; gating them one by one", len(leads))
        reports = None
    refusals: list[InputError | None] = []
    for i, lead in enumerate(leads):
        try:
            lead.quality = _verdict(reports[i] if reports is not None else assess_quality(lead.signal_uv, lead.fs))
            refusals.append(None)
        except InputError as exc:
            refusals.append(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected gate failure is still the input's problem
            LOG.exception("signal-quality gate failed")
            refusals.append(InputError(f"signal-quality gate failed ({type(exc).__name__}: {exc})"))
    return refusals


def load_input(path: str | Path, input_lead: str, fs: float = NPY_DEFAULT_FS, units: str = "uV",
               sidecar: str | Path | None = None, limits: Limits = DEFAULT_LIMITS,
               gated: bool = True, fs_source: str = FS_ASSUMED) -> LeadInput:
    """Read one input the way both doors (``serve``, ``convert``) read it: ``path`` plus its
    sidecar file ``sidecar`` (None or missing: no sidecar; see :func:`ecg_dicom.sidecar.sidecar_path`).

    The sidecar's ``fs`` and ``units`` replace the defaults ``fs`` and ``units`` (which apply
    to a ``.npy`` without one; ``fs_source`` says whether ``fs`` was given or assumed); its
    ``lead`` must be ``input_lead``, the lead the model
    takes; its patient/study keys travel with the result. ``gated``: see :func:`load_lead`.
    Raises :class:`InputError`.
    """
    params = read_sidecar(sidecar)
    if params is None:
        return load_lead(path, input_lead, fs, units, limits, gated, fs_source)
    if params.lead is not None and params.lead != input_lead:
        raise InputError(f"sidecar says lead {params.lead}; the model in use takes lead {input_lead}")
    item = load_lead(path, input_lead, params.fs or fs, params.units or units, limits, gated,
                     FS_FROM_SIDECAR if params.fs else fs_source)
    if item.kind != "npy":
        raise InputError("a sidecar .json belongs to a .npy input; this is a DICOM file, which carries "
                         "its own rate, lead and patient")
    item.sidecar = params
    return item
