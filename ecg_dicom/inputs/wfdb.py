"""WFDB records (PhysioNet, research archives): a ``.hea`` header and its signal file(s).

The header is the input; the signal files it names (``X.dat``, or ``X.mat`` as the
PhysioNet challenges keep them, a MATLAB v4 file read as format 16 past its byte offset)
are its companions: they travel with it (the watched folder waits for them and moves
them with the header, :mod:`ecg_dicom.ingest.watcher`) and are read from ``signal_dir``
by the names the header gives (plain file names only: no path, no link).

Read here, not with ``wfdb.rdrecord``: rdrecord reads a record by its name from one folder
and the spool keeps a job's companions apart from the header under another name; it also
reads whatever size a header declares. This reader knows the header (record line: name,
signals, rate, length, base time and date; signal lines: file, format, byte offset,
gain(baseline)/units, ADC zero, description) and the sample formats of ECG archives: 16,
61, 80, 160, 24, 32 and 212, one sample per frame; a signal file must hold at least the
bytes the header declares. Multi-segment records and several samples per frame are
refused with a reason. Physical value = (digital - baseline) / gain in the signal's units
(mV by default); invalid samples (the format's most negative value) make a lead unusable.
Base date and time become the acquisition time; a header names no patient.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.inputs.demographics import acquisition, file_sidecar, norm_time
from ecg_dicom.inputs.leadset import lead_input
from ecg_dicom.limits import Limits
from ecg_dicom.logsafe import wire

WHAT = "WFDB record"
MAX_HEADER_BYTES = 64 * 1024
# bits per sample of each supported format
FORMAT_BITS = {16: 16, 61: 16, 80: 8, 160: 16, 24: 24, 32: 32, 212: 12}
_UNIT_TO_UV = {"mv": 1000.0, "uv": 1.0, "µv": 1.0, "v": 1e6, "nv": 1e-3}  # lower case: PTB writes "mv"
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# numbers have at most 15 digits (a header is at most 64 KiB: no 10,000-digit integers)
_RECORD = re.compile(r"^([A-Za-z0-9_.~\-]+)(/\d+)?\s+(\d{1,15})(?:\s+([0-9.eE+\-]{1,30})(?:/[0-9.eE+\-]+)?"
                     r"(?:\([^)]*\))?)?(?:\s+(\d{1,15}))?(?:\s+(\S+))?(?:\s+(\S+))?\s*$")
_FORMAT = re.compile(r"^(\d{1,15})(x\d{1,15})?(:\d{1,15})?(\+\d{1,15})?$")
_GAIN = re.compile(r"^([0-9.eE+\-]{1,30})(?:\((-?\d{1,15})\))?(?:/(\S+))?$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.~\-]*$")


@dataclass(frozen=True)
class Signal:
    """One signal line: its file, format, byte offset, gain (adu per unit), baseline (adu),
    units and description (the lead name)."""

    file_name: str
    fmt: int
    byte_offset: int
    gain: float
    baseline: int
    units: str
    description: str


@dataclass(frozen=True)
class Header:
    """A parsed header: rate (Hz), samples per signal (0: not stated), base time and date
    as written (may be empty), the signal lines."""

    record: str
    fs: float
    sig_len: int
    base_time: str
    base_date: str
    signals: tuple[Signal, ...]

    def files(self) -> dict[str, list[int]]:
        """Signal file name -> indices of its signals, in the order of the header."""
        out: dict[str, list[int]] = {}
        for i, sig in enumerate(self.signals):
            out.setdefault(sig.file_name, []).append(i)
        return out

    def expected_bytes(self) -> dict[str, int | None]:
        """Signal file name -> bytes it must hold (None when the header gives no length)."""
        out: dict[str, int | None] = {}
        for name, idx in self.files().items():
            first = self.signals[idx[0]]
            out[name] = (first.byte_offset + math.ceil(self.sig_len * len(idx) * FORMAT_BITS[first.fmt] / 8)
                         if self.sig_len else None)
        return out


def parse_header(text: str) -> Header:
    """Parse a header's text. Raises InputError with a one-line reason."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise InputError(f"{WHAT}: empty header")
    match = _RECORD.match(lines[0])
    if match is None:
        raise InputError(f"{WHAT}: the first line is not a WFDB record line")
    if match.group(2):
        raise InputError(f"{WHAT}: a multi-segment record, not supported (convert it to one segment)")
    nsig = int(match.group(3))
    if nsig < 1 or nsig > 64:
        raise InputError(f"{WHAT}: {nsig} signals declared")
    try:
        fs = float(match.group(4)) if match.group(4) else 250.0
    except ValueError:
        raise InputError(f"{WHAT}: sampling rate {wire(match.group(4), 16)} is not a number") from None
    if not math.isfinite(fs) or fs <= 0 or fs > 100_000:
        raise InputError(f"{WHAT}: sampling rate {wire(match.group(4), 16)} is not plausible")
    sig_len = int(match.group(5) or 0)
    if len(lines) < 1 + nsig:
        raise InputError(f"{WHAT}: {nsig} signals declared, {len(lines) - 1} signal lines")
    signals = tuple(_signal_line(line, n + 1) for n, line in enumerate(lines[1:1 + nsig]))
    return Header(match.group(1), fs, sig_len, match.group(6) or "", match.group(7) or "", signals)


def _signal_line(line: str, n: int) -> Signal:
    fields = line.split(None, 8)
    if len(fields) < 2:
        raise InputError(f"{WHAT}: signal line {n} is incomplete")
    name = fields[0]
    if not _FILE_NAME.match(name) or name in (".", ".."):
        raise InputError(f"{WHAT}: signal {n}'s file {wire(name, 40)} is not a plain file name (no folders)")
    fmt_match = _FORMAT.match(fields[1])
    if fmt_match is None:
        raise InputError(f"{WHAT}: signal {n} has the format {wire(fields[1], 16)}")
    fmt = int(fmt_match.group(1))
    if fmt not in FORMAT_BITS:
        raise InputError(f"{WHAT}: signal {n} is in WFDB format {fmt}; readable: "
                         f"{', '.join(map(str, FORMAT_BITS))}")
    if fmt_match.group(2) and fmt_match.group(2) != "x1":
        raise InputError(f"{WHAT}: signal {n} has several samples per frame, not supported")
    offset = int(fmt_match.group(4)[1:]) if fmt_match.group(4) else 0
    gain, baseline, units = 200.0, None, "mV"
    if len(fields) > 2:
        gain_match = _GAIN.match(fields[2])
        if gain_match is None:
            raise InputError(f"{WHAT}: signal {n} has the gain {wire(fields[2], 24)}")
        try:
            gain = float(gain_match.group(1)) or 200.0
        except ValueError:
            raise InputError(f"{WHAT}: signal {n}'s gain is not a number") from None
        baseline = int(gain_match.group(2)) if gain_match.group(2) else None
        units = gain_match.group(3) or "mV"
    if not math.isfinite(gain) or gain <= 0:
        raise InputError(f"{WHAT}: signal {n}'s gain must be positive")
    adc_zero = int(fields[4]) if len(fields) > 4 and re.fullmatch(r"-?\d{1,15}", fields[4]) else 0
    description = fields[8].strip() if len(fields) > 8 else ""
    return Signal(name, fmt, offset, gain, adc_zero if baseline is None else baseline, units, description)


def read_header(path: str | Path) -> Header:
    """Read and parse the header file at ``path`` (at most 64 KiB of text)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_HEADER_BYTES + 1)
    if len(data) > MAX_HEADER_BYTES:
        raise InputError(f"{WHAT}: header larger than {MAX_HEADER_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_header(text)


def _signal_lines(path: str | Path) -> list[list[str]] | None:
    """The signal lines (split) of a file that looks like a WFDB header: small text whose
    first line is a record line followed by as many lines as it declares signals, each a
    file name and a format number; None for anything else."""
    try:
        if os.stat(path).st_size > MAX_HEADER_BYTES:
            return None
        with open(path, "rb") as fh:
            head = fh.read(MAX_HEADER_BYTES)
    except OSError:
        return None
    if b"\x00" in head or not head[:1].isascii():
        return None
    lines = [line.strip() for line in head.decode("latin-1").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    match = _RECORD.match(lines[0]) if lines else None
    if match is None or not 1 <= int(match.group(3)) <= 64 or len(lines) < 1 + int(match.group(3)):
        return None
    fields = [line.split() for line in lines[1:1 + int(match.group(3))]]
    return fields if all(len(f) >= 2 and re.match(r"\d", f[1]) for f in fields) else None


def is_wfdb_header(path: str | Path) -> bool:
    """Whether the file is a WFDB header by content (see :func:`_signal_lines`; whether its
    values are acceptable, :func:`parse_header` says with a reason)."""
    return _signal_lines(path) is not None


def signal_file_names(path: str | Path) -> list[str]:
    """The signal files a WFDB header names, plain file names only, in order; also for a
    header that :func:`parse_header` refuses (its signal files go where it goes)."""
    names: list[str] = []
    for fields in _signal_lines(path) or []:
        if _FILE_NAME.match(fields[0]) and fields[0] not in names:
            names.append(fields[0])
    return names


def signal_file(signal_dir: Path, name: str) -> Path:
    """The signal file ``name`` in ``signal_dir``: a regular file, never a link."""
    path = Path(signal_dir) / name
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise InputError(f"{WHAT}: its signal file {wire(name, 40)} is missing (drop it with the header)") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{WHAT}: its signal file {wire(name, 40)} is not a regular file (a link?), refused")
    return path


def read_wfdb(path: Path, input_lead: str, content_hash: str, limits: Limits,
              signal_dir: Path | None = None) -> LeadInput:
    """``input_lead`` of the record whose header is ``path``, its signal files in
    ``signal_dir`` (default: beside the header). Raises InputError."""
    header = read_header(path)
    if len(header.signals) > limits.max_channels:
        raise InputError(f"{WHAT}: {len(header.signals)} signals, at most {limits.max_channels} (limits.max_channels)")
    signal_dir = Path(signal_dir) if signal_dir is not None else Path(path).parent
    named: dict[str, np.ndarray] = {}
    for name, idx in header.files().items():
        file = signal_file(signal_dir, name)
        first = header.signals[idx[0]]
        if any(header.signals[i].fmt != first.fmt or header.signals[i].byte_offset != first.byte_offset
               for i in idx):
            raise InputError(f"{WHAT}: signals of one file in different formats, not supported")
        digital = _read_file(file, first.fmt, first.byte_offset, len(idx), header.sig_len, limits)
        for column, i in enumerate(idx):
            sig = header.signals[i]
            if sig.units.lower() not in _UNIT_TO_UV:
                raise InputError(f"{WHAT}: signal {i + 1} in unknown units {wire(sig.units, 10)}")
            values = (digital[:, column].astype(np.float64) - sig.baseline) / sig.gain * _UNIT_TO_UV[sig.units.lower()]
            values[digital[:, column] == _INVALID[first.fmt]] = np.nan
            named.setdefault(sig.description or f"signal {i + 1}", values)
    date, time = header.base_date, header.base_time
    if ":" in date and ":" not in time:  # the PhysioNet challenge headers write the date first
        date, time = time, date
    found = acquisition(wfdb_date(date), norm_time(time)) if wfdb_date(date) else {}
    return lead_input(named, header.fs, input_lead, content_hash, "wfdb", WHAT, file_sidecar(found, "wfdb"))


def wfdb_date(text: str) -> str:
    """A header's base date as ``YYYYMMDD``: WFDB's ``DD/MM/YYYY``, or ``DD-Mon-YYYY`` as the
    PhysioNet challenge headers write it; "" otherwise."""
    match = re.fullmatch(r"(\d{1,2})[/-](\d{1,2}|[A-Za-z]{3})[/-](\d{4})", text.strip())
    if match is None:
        return ""
    month = match.group(2)
    month_n = int(month) if month.isdigit() else (_MONTHS.index(month.upper()) + 1 if month.upper() in _MONTHS else 0)
    return f"{int(match.group(3)):04d}{month_n:02d}{int(match.group(1)):02d}" if 1 <= month_n <= 12 else ""


_INVALID = {16: -32768, 61: -32768, 80: -128, 160: -32768, 24: -(1 << 23), 32: -(1 << 31), 212: -2048}


def _read_file(file: Path, fmt: int, offset: int, nsig: int, sig_len: int, limits: Limits) -> np.ndarray:
    """(samples, nsig) int64 digital values of one signal file."""
    size = os.stat(file).st_size
    bits = FORMAT_BITS[fmt]
    available = max(size - offset, 0) * 8 // (bits * nsig)
    n = sig_len or available
    if n > limits.max_samples_per_channel:
        raise InputError(f"{WHAT}: {n} samples per signal, at most {limits.max_samples_per_channel} "
                         "(limits.max_samples_per_channel)")
    if available < n:
        raise InputError(f"{WHAT}: the signal file {wire(file.name, 40)} holds {available} of the {n} samples "
                         "its header declares (cut short?)")
    count = math.ceil(n * nsig * bits / 8)
    if count > limits.max_input_bytes:
        raise InputError(f"{WHAT}: the signal file {wire(file.name, 40)} is too large: {count} bytes to read, at most "
                         f"{limits.max_input_bytes} (limits.max_input_bytes)")
    with open(file, "rb") as fh:
        fh.seek(offset)
        raw = np.frombuffer(fh.read(count), dtype=np.uint8)
    if fmt == 16:
        values = raw.view("<i2").astype(np.int64)
    elif fmt == 61:
        values = raw.view(">i2").astype(np.int64)
    elif fmt == 160:
        values = raw.view("<u2").astype(np.int64) - 32768
    elif fmt == 80:
        values = raw.astype(np.int64) - 128
    elif fmt == 32:
        values = raw.view("<i4").astype(np.int64)
    elif fmt == 24:
        b = raw.reshape(-1, 3).astype(np.int64)
        values = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
    else:  # 212: two 12-bit samples in three bytes
        padded = np.concatenate([raw, np.zeros((-len(raw)) % 3, dtype=np.uint8)]).reshape(-1, 3).astype(np.int64)
        first = padded[:, 0] | ((padded[:, 1] & 0x0F) << 8)
        second = padded[:, 2] | ((padded[:, 1] & 0xF0) << 4)
        values = np.stack([first, second], axis=1).reshape(-1)[: n * nsig]
        values = np.where(values >= 2048, values - 4096, values)
    return values[: n * nsig].reshape(n, nsig)
