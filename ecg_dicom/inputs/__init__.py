"""Read one input, whatever its format, as a :class:`LeadInput`: one module per format
(``npy``, ``dicom``, ``muse``, ``philips``, ``aecg``, ``wfdb``, ``scp``), each giving the same
LeadInput; :mod:`.base` holds it and the signal-quality gate. Formats are recognised by
content (:func:`input_kind`), never by extension alone.

Both the ``convert`` command and the service's worker come through :func:`load_input`, so a
file is judged the same way whichever door it came in by.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ecg_dicom.errors import InputError
from ecg_dicom.files import file_sha256
from ecg_dicom.core.leadchoice import AUTO, model_leads
from ecg_dicom.inputs.base import FS_ASSUMED, FS_FROM_DICOM, FS_FROM_FILE, FS_FROM_SIDECAR, FS_GIVEN, \
    NPY_DEFAULT_FS, QUALITY_LISTENERS, LeadInput, choose_lead, gate, gate_many, refuse_links
from ecg_dicom.inputs.demographics import merge_sidecar
from ecg_dicom.inputs.dicom import DICOM_MAGIC_OFFSET, is_dicom_file, read_dicom_input
from ecg_dicom.inputs.npy import NPY_MAGIC, _NPY_HEADER_ERRORS, _npy_data_bytes, _npy_header, is_npy_file, \
    read_npy_array, read_npy_input
from ecg_dicom.leads import input_leads_of
from ecg_dicom.logsafe import wire
from ecg_dicom.limits import DEFAULT_LIMITS, Limits, check_input_bytes
from ecg_dicom.inputs.scp import is_scp_file
from ecg_dicom.inputs.wfdb import is_wfdb_header, read_header, read_wfdb, signal_file_names
from ecg_dicom.inputs.xmlsafe import SNIFF_BYTES, parse_xml, sniff_root
from ecg_dicom.sidecar import read_sidecar

__all__ = ["FS_ASSUMED", "FS_FROM_DICOM", "FS_FROM_FILE", "FS_FROM_SIDECAR", "FS_GIVEN", "NPY_DEFAULT_FS", "QUALITY_LISTENERS", "LeadInput", "file_sha256", "gate", "gate_many", "incomplete_reason", "input_kind",
           "is_dicom_file", "is_npy_file", "load_input", "load_lead", "looks_like_input", "read_npy_array",
           "record_sha256", "refuse_links", "wfdb_companions"]

# root element's local name -> (format, its name for reasons)
XML_ROOTS = {"RestingECG": ("muse", "GE MUSE XML"), "restingecgdata": ("philips", "Philips Sierra XML"),
             "AnnotatedECG": ("aecg", "HL7 aECG")}
VENDOR_KINDS = ("muse", "philips", "aecg", "wfdb", "scp")


def input_kind(path: str | Path) -> str | None:
    """The format of the file at ``path`` by its content: "npy", "dicom", "muse", "philips",
    "aecg", "wfdb" (a WFDB header), "scp" (SCP-ECG), or None. Raises OSError when it cannot
    be read."""
    if is_npy_file(path):
        return "npy"
    if is_dicom_file(path):
        return "dicom"
    if is_scp_file(path):
        return "scp"
    root = sniff_root(path)
    if root is not None:
        return XML_ROOTS[root[0]][0] if root[0] in XML_ROOTS else None
    return "wfdb" if is_wfdb_header(path) else None


def looks_like_input(path: Path) -> bool:
    """Whether a file in an input folder is meant as an input: .npy, .dcm, or any format
    :func:`input_kind` recognises (DICOM, vendor XML, a WFDB header) by content."""
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() in (".npy", ".dcm", ".dicom"):
        return True
    try:
        return input_kind(path) is not None
    except OSError:
        return False


def wfdb_companions(path: str | Path) -> list[str]:
    """The signal file names a WFDB header names ([] when ``path`` is no header), also when
    the header itself is refused (they go with it, to ``rejected/``)."""
    return signal_file_names(path)


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
    root = sniff_root(path)
    if root is not None and root[0] in XML_ROOTS:
        return _xml_unclosed(path, root[0], size)
    if is_wfdb_header(path):
        return _wfdb_incomplete(path)
    return None


def _xml_unclosed(path: Path, root: str, size: int) -> str | None:
    """A vendor XML file whose last bytes do not hold its root's closing tag."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(max(0, size - SNIFF_BYTES))
            tail = fh.read()
    except OSError:
        return None
    utf16 = head in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head
    closing = f"{root}>".encode("utf-16-be" if head == b"\xfe\xff" else "utf-16-le") if utf16 else f"{root}>".encode()
    return None if closing in tail else f"ends before the closing tag of its <{root}>"


def _wfdb_incomplete(path: Path) -> str | None:
    """A WFDB header whose signal files are not all beside it (with the bytes it declares,
    when the header can be read)."""
    try:
        expected = read_header(path).expected_bytes()
    except (OSError, InputError):  # refused later with its reason: its files still go with it
        expected = dict.fromkeys(signal_file_names(path))
    for name, size in expected.items():
        try:
            have = os.lstat(path.parent / name).st_size
        except OSError:
            return f"its signal file {wire(name, 40)} is not there yet"
        if size is not None and have < size:
            return f"its signal file {wire(name, 40)} holds {have} of {size} bytes"
    return None


def load_lead(path: str | Path, input_lead: str = "I", fs: float = NPY_DEFAULT_FS, units: str = "uV",
              limits: Limits = DEFAULT_LIMITS, gated: bool = True,
              models: tuple[str, ...] | None = None, signal_dir: str | Path | None = None,
              fs_source: str = FS_GIVEN, rows: tuple[str, ...] | None = None) -> LeadInput:
    """Read ``input_lead`` from ``path`` and check it.

    ``input_lead`` "auto": a source holding several leads gives the lead the model does best
    from, among the inputs ``models`` names (default: every one auto knows), chosen and gated
    here whatever ``gated`` says (:func:`ecg_dicom.inputs.base.choose_lead`); a one-lead
    source gives lead I.

    ``input_lead`` "I+II" (the two-lead model): I and II as (2, N), from a .npy whose sidecar
    names its ``rows``, or from any source holding both.

    A .npy is one lead (``(N,)`` or ``(1, N)``) in ``units`` at ``fs`` Hz, or ``(K, N)`` with
    ``rows`` naming its leads (the two-lead model takes (2, N), I and II); a DICOM file is
    recognised by content and read with :func:`ecg_dicom.dicom.reader.read_dicom_lead`
    (its own sampling rate and units); a vendor file (GE MUSE, Philips, HL7 aECG XML, SCP-ECG,
    a WFDB header whose signal files are in ``signal_dir``, default beside it) by its reader,
    which also gives every lead it holds and its patient (:mod:`.demographics`). Inputs
    beyond ``limits`` are refused before they are decoded. The lead then passes the
    signal-quality gate (:func:`gate`), unless ``gated`` is False: then the caller gates it
    (:func:`gate_many`, for a batch). ``fs_source`` says where a .npy's ``fs`` came from
    (:attr:`LeadInput.fs_source`). Raises :class:`InputError` (:class:`SignalQualityError`
    from the gate) with a one-line reason.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        check_input_bytes(size, limits)
        kind = input_kind(path) if size else None
        if kind is None and path.suffix.lower() in (".dcm", ".dicom"):
            kind = "dicom"
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from exc
    if size == 0:
        raise InputError("empty file (0 bytes)")
    auto = input_lead == AUTO
    wanted = input_leads_of(input_lead) if not auto else ("I",)
    lead = "I" if auto else input_lead  # auto: read lead I, then choose among the source's leads
    if kind == "npy":
        item = read_npy_input(path, lead, fs, units, limits, rows)
    elif kind == "dicom":
        item = _read_dicom_auto(path, limits) if auto else read_dicom_input(path, input_lead, limits)
    elif kind == "wfdb":
        item = _read_wfdb_input(path, wanted[0], limits, signal_dir)
    elif kind == "scp":
        item = _read_scp_input(path, wanted[0], limits)
    elif kind is not None:
        item = _read_xml_input(path, kind, wanted[0], limits)
    else:
        raise InputError("neither a .npy array nor a DICOM file nor a vendor ECG (no NUMPY magic, no DICM "
                         "preamble, no GE MUSE / Philips Sierra / HL7 aECG XML root, no WFDB record line, no SCP-ECG "
                         "section 0)")
    item.fs_source = fs_source if kind == "npy" else FS_FROM_DICOM if kind == "dicom" else FS_FROM_FILE
    if len(wanted) > 1 and kind not in ("npy", "dicom"):  # a vendor file: the leads from all it holds
        item = _with_leads(item, input_lead, wanted)
    if auto and item.source_leads:
        return choose_lead(item, models if models is not None else model_leads(AUTO))
    if gated:
        item.quality = gate(item.signal_uv, item.fs, item.lead)
    return item


def _with_leads(item: LeadInput, input_lead: str, wanted: tuple[str, ...]) -> LeadInput:
    """``item`` (read for its first lead) given every lead of ``wanted`` from its source's
    leads, as the (K, N) input of a multi-lead model."""
    from ecg_dicom.core.preprocess import check_single_lead

    leads = item.source_leads or {}
    missing = [name for name in wanted if name not in leads]
    if missing:
        raise InputError(f"the model takes leads {' and '.join(wanted)}; the source holds no lead {missing[0]}")
    item.signal_uv = np.stack([check_single_lead(leads[name], item.fs, "uV") for name in wanted])
    item.lead = input_lead
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


def _read_bounded(path: Path, limits: Limits) -> bytes:
    """The whole file, refused when it is larger than ``limits.max_input_bytes`` (read at most one byte more)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_input_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from exc
    check_input_bytes(len(data), limits)
    return data


def _read_scp_input(path: Path, input_lead: str, limits: Limits) -> LeadInput:
    """An SCP-ECG file (already refused by size when too large)."""
    from ecg_dicom.inputs.scp import read_scp

    data = _read_bounded(path, limits)
    return read_scp(data, input_lead, hashlib.sha256(data).hexdigest(), limits)


def _read_xml_input(path: Path, kind: str, input_lead: str, limits: Limits) -> LeadInput:
    """A vendor XML file (already refused by size when too large) by its format's reader."""
    from ecg_dicom.inputs import aecg, muse, philips

    data = _read_bounded(path, limits)
    what = {"muse": muse.WHAT, "philips": philips.WHAT, "aecg": aecg.WHAT}[kind]
    root = parse_xml(data, what)
    if root.tag not in XML_ROOTS or XML_ROOTS[root.tag][0] != kind:
        raise InputError(f"{what}: the document's root element is not the one its first bytes named")
    reader = {"muse": muse.read_muse, "philips": philips.read_philips, "aecg": aecg.read_aecg}[kind]
    return reader(root, input_lead, hashlib.sha256(data).hexdigest(), limits)


def record_sha256(path: str | Path, signal_dir: str | Path | None = None) -> str:
    """A WFDB record's content hash: of its header and every signal file it names (those
    missing count as missing), so a record whose samples changed gets new output UIDs."""
    path = Path(path)
    signal_dir = Path(signal_dir) if signal_dir is not None else path.parent
    digest = hashlib.sha256(file_sha256(path).encode())
    for name in signal_file_names(path):
        digest.update((file_sha256(signal_dir / name) if (signal_dir / name).is_file() else "missing").encode())
    return digest.hexdigest()


def _read_wfdb_input(path: Path, input_lead: str, limits: Limits, signal_dir: str | Path | None) -> LeadInput:
    """A WFDB record, its content hash :func:`record_sha256`."""
    item = read_wfdb(path, input_lead, "", limits, signal_dir)
    item.content_hash = record_sha256(path, signal_dir)
    return item


def load_input(path: str | Path, input_lead: str, fs: float = NPY_DEFAULT_FS, units: str = "uV",
               sidecar: str | Path | None = None, limits: Limits = DEFAULT_LIMITS,
               gated: bool = True, models: tuple[str, ...] | None = None,
               signal_dir: str | Path | None = None, fs_source: str = FS_ASSUMED) -> LeadInput:
    """Read one input the way both doors (``serve``, ``convert``) read it: ``path`` plus its
    sidecar file ``sidecar`` (None or missing: no sidecar; see :func:`ecg_dicom.sidecar.sidecar_path`).

    The sidecar's ``fs`` and ``units`` replace the defaults ``fs`` and ``units`` (which apply
    to a ``.npy`` without one); its ``lead`` must be ``input_lead``, the lead the model
    takes (with ``auto``: one of ``models``, the lead read); its patient/study keys travel with
    the result. A vendor file (MUSE, Philips, aECG, SCP-ECG, WFDB) brings its own patient and
    acquisition; a sidecar beside it overrides them key by key (its ``fs`` and ``units`` are
    refused: the file states its own). ``fs_source``: whether the default ``fs`` was given or
    assumed. ``gated``, ``models``, ``signal_dir``: see :func:`load_lead`. Raises :class:`InputError`.
    """
    params = read_sidecar(sidecar)
    if params is None:
        return load_lead(path, input_lead, fs, units, limits, gated, models, signal_dir, fs_source)
    if input_lead == AUTO and params.lead is not None:
        if params.lead not in (models if models is not None else model_leads(AUTO)):
            raise InputError(f"sidecar says lead {params.lead}; no model for it is loaded")
        input_lead = params.lead
    if params.lead is not None and params.lead != input_lead:
        raise InputError(f"sidecar says lead {params.lead}; the model in use takes lead {input_lead}")
    item = load_lead(path, input_lead, params.fs or fs, params.units or units, limits, gated, models, signal_dir,
                     FS_FROM_SIDECAR if params.fs else fs_source, params.leads)
    if item.kind in VENDOR_KINDS:
        if params.fs is not None or params.units is not None:
            raise InputError(f"sidecar .json gives fs or units, but this {item.kind} file states its own rate and "
                             "units: give only patient and study keys")
        item.sidecar = merge_sidecar(item.sidecar, params)
        return item
    if item.kind != "npy":
        raise InputError("a sidecar .json belongs to a .npy input; this is a DICOM file, which carries "
                         "its own rate, lead and patient")
    item.sidecar = params
    return item
