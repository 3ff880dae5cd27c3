"""SCP-ECG (EN 1064 / ISO 11073-91064), the lossless subset carts write for resting ECGs.

A file: CRC (2 bytes), length (4), then sections, each with a 16-byte header (CRC, id,
length, versions, 6 reserved bytes: section 0 carries "SCPECG" there). Section 0 points at
the others. Read here: section 1 (patient and acquisition tags), section 2 (Huffman tables:
none, or the standard's default table, "19999"), section 3 (the leads, their sample ranges
and whether a reference beat was subtracted), section 6 (rhythm data: amplitude value
multiplier in nV, sample interval in µs, encoding as values, first or second differences,
per lead a byte count). Refused with a reason: reference beat subtraction (section 3 flag),
bimodal compression, a file's own Huffman tables, leads recorded one after another; the
file and section 6 CRCs are checked.

Implemented here from the standard's description (no maintained Python reader exists);
checked sample for sample against the DICOM and aECG copies of the same ECG in
shared/data (ECG Toolkit's example of a Mortara ELI 250 recording).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.inputs.demographics import acquisition, file_sidecar, person_name
from ecg_dicom.inputs.leadset import lead_input
from ecg_dicom.limits import Limits

WHAT = "SCP-ECG"
MAGIC = b"SCPECG"
DEFAULT_HUFFMAN = 19999
# SCP lead codes (section 3) of the standard 12 leads
LEAD_CODES = {1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6", 61: "III", 62: "aVR",
              63: "aVL", 64: "aVF"}
_SEX = {1: "M", 2: "F"}


def is_scp_file(path: str | Path) -> bool:
    """Whether the file starts like SCP-ECG: section 0's header (id 0, "SCPECG") at byte 6."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(22)
    except OSError:
        return False
    return len(head) == 22 and head[16:22] == MAGIC and head[8:10] == b"\x00\x00"


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc_ccitt(data: bytes) -> int:
    """CRC-CCITT (polynomial 0x1021, initial 0xFFFF), as SCP-ECG computes it."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def read_scp(data: bytes, input_lead: str, content_hash: str, limits: Limits) -> LeadInput:
    """``input_lead`` of an SCP-ECG file's bytes (see the module docstring). Raises InputError."""
    if len(data) < 22 or data[16:22] != MAGIC:
        raise InputError(f"{WHAT}: no section 0")
    declared = struct.unpack_from("<I", data, 2)[0]
    if declared != len(data):
        raise InputError(f"{WHAT}: the file declares {declared} bytes and holds {len(data)}")
    if struct.unpack_from("<H", data, 0)[0] != crc_ccitt(data[2:]):
        raise InputError(f"{WHAT}: the file's CRC does not match (damaged)")
    sections = _sections(data)
    if 3 not in sections or 6 not in sections:
        raise InputError(f"{WHAT}: no section 3 (leads) or 6 (rhythm data)")
    huffman = _huffman(sections.get(2))
    leads, simultaneous = _leads(sections[3])
    if not simultaneous:
        raise InputError(f"{WHAT}: leads recorded one after another, not simultaneously: not supported")
    fs, named = _rhythm(sections[6], leads, huffman, limits)
    found = _demographics(sections[1]) if 1 in sections else {}
    return lead_input(named, fs, input_lead, content_hash, "scp", WHAT, file_sidecar(found, "scp"))


def _sections(data: bytes) -> dict[int, bytes]:
    """Section id -> its bytes after the 16-byte header, from section 0's pointers."""
    length = struct.unpack_from("<I", data, 10)[0]
    if length < 16 or 6 + length > len(data):
        raise InputError(f"{WHAT}: section 0 is damaged")
    out = {}
    for pos in range(6 + 16, 6 + length - 9, 10):
        number, size, index = struct.unpack_from("<HII", data, pos)
        if size == 0 or index == 0:
            continue
        start = index - 1
        if size < 16 or start + size > len(data):
            raise InputError(f"{WHAT}: section {number} lies outside the file")
        section = data[start:start + size]
        if struct.unpack_from("<H", section, 2)[0] != number:
            raise InputError(f"{WHAT}: section {number}'s header names another section")
        if number == 6 and struct.unpack_from("<H", section, 0)[0] != crc_ccitt(section[2:]):
            raise InputError(f"{WHAT}: section 6's CRC does not match (damaged rhythm data)")
        out[number] = section[16:]
    return out


def _huffman(section: bytes | None) -> bool:
    """Whether the rhythm data are Huffman-coded with the default table (False: not coded)."""
    if section is None:
        return False
    if len(section) < 2:
        raise InputError(f"{WHAT}: section 2 is empty")
    if struct.unpack_from("<H", section, 0)[0] != DEFAULT_HUFFMAN:
        raise InputError(f"{WHAT}: the file's own Huffman tables (section 2): only the default table is supported")
    return True


def _leads(section: bytes) -> tuple[list[tuple[str | None, int, int]], bool]:
    """[(lead name or None, first sample, last sample)], whether all were recorded together."""
    if len(section) < 2:
        raise InputError(f"{WHAT}: section 3 is empty")
    count, flags = section[0], section[1]
    if flags & 0x01:
        raise InputError(f"{WHAT}: a reference beat is subtracted from the rhythm data: not supported")
    if len(section) < 2 + 9 * count:
        raise InputError(f"{WHAT}: section 3 declares {count} leads and holds fewer")
    leads = []
    for i in range(count):
        start, end, code = struct.unpack_from("<IIB", section, 2 + 9 * i)
        leads.append((LEAD_CODES.get(code), start, end))
    return leads, bool(flags & 0x04)


def _rhythm(section: bytes, leads: list[tuple[str | None, int, int]], huffman: bool,
            limits: Limits) -> tuple[float, dict[str, np.ndarray]]:
    """(rate Hz, lead name -> µV) from section 6."""
    if len(section) < 6 + 2 * len(leads):
        raise InputError(f"{WHAT}: section 6 is too short")
    avm_nv, interval_us, encoding, bimodal = struct.unpack_from("<HHBB", section, 0)
    if bimodal:
        raise InputError(f"{WHAT}: bimodal compression: not supported")
    if encoding not in (0, 1, 2):
        raise InputError(f"{WHAT}: rhythm encoding {encoding} unknown")
    if avm_nv == 0 or interval_us == 0:
        raise InputError(f"{WHAT}: amplitude multiplier or sample interval missing")
    fs = 1e6 / interval_us
    sizes = struct.unpack_from(f"<{len(leads)}H", section, 6)
    offset = 6 + 2 * len(leads)
    named: dict[str, np.ndarray] = {}
    for (name, start, end), size in zip(leads, sizes):
        n = end - start + 1
        if n <= 0 or n > limits.max_samples_per_channel:
            raise InputError(f"{WHAT}: a lead declares {n} samples (at most {limits.max_samples_per_channel})")
        chunk = section[offset:offset + size]
        offset += size
        if len(chunk) < size:
            raise InputError(f"{WHAT}: section 6 ends inside its lead data")
        values = _default_huffman(chunk, n) if huffman else _plain(chunk, n)
        if encoding == 1:
            values = np.cumsum(values)
        elif encoding == 2:
            values = _undo_second_differences(values)
        if name is not None:
            named[name] = values.astype(np.float64) * avm_nv / 1000.0
    return fs, named


def _plain(chunk: bytes, n: int) -> np.ndarray:
    if len(chunk) < 2 * n:
        raise InputError(f"{WHAT}: a lead holds {len(chunk) // 2} of its {n} samples")
    return np.frombuffer(chunk[: 2 * n], dtype="<i2").astype(np.int64)


def _default_huffman(chunk: bytes, n: int) -> np.ndarray:
    """``n`` values Huffman-coded with the standard's default table: 0 as "0"; ±1..±8 as
    k ones, a zero, then the sign bit (k = 1..8... : ``10x`` = ±1, ``110x`` = ±2 ...);
    ten ones then a zero: an 8-bit value follows; eleven ones... see below. Bits are read
    most significant first."""
    bits = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8)).tolist()  # a list: ~5x faster to index
    total = len(bits)
    out = [0] * n
    pos = 0
    for i in range(n):
        ones = 0
        while ones < 9 and pos < total and bits[pos]:
            ones += 1
            pos += 1
        if ones < 9:  # a zero ends the prefix
            if pos >= total:
                raise InputError(f"{WHAT}: a lead's Huffman data end after {i} of its {n} samples")
            pos += 1
            if ones == 0:
                continue
            if pos >= total:
                raise InputError(f"{WHAT}: a lead's Huffman data end after {i} of its {n} samples")
            out[i] = -ones if bits[pos] else ones
            pos += 1
            continue
        # nine ones, then 0: an 8-bit value; 1: a 16-bit value (two's complement)
        if pos >= total:
            raise InputError(f"{WHAT}: a lead's Huffman data end after {i} of its {n} samples")
        width = 16 if bits[pos] else 8
        pos += 1
        if pos + width > total:
            raise InputError(f"{WHAT}: a lead's Huffman data end after {i} of its {n} samples")
        value = 0
        for bit in bits[pos:pos + width]:
            value = (value << 1) | bit
        pos += width
        out[i] = value - (1 << width) if value >= 1 << (width - 1) else value
    return np.array(out, dtype=np.int64)


def _undo_second_differences(d: np.ndarray) -> np.ndarray:
    """x[0], x[1] as stored; x[i] = d[i] + 2 x[i-1] - x[i-2]."""
    x = d.tolist()
    for i in range(2, len(x)):
        x[i] += 2 * x[i - 1] - x[i - 2]
    return np.array(x, dtype=np.int64)


def _demographics(section: bytes) -> dict[str, str]:
    """DICOM keywords from section 1's tags (tag, 2-byte length, value)."""
    tags: dict[int, bytes] = {}
    pos = 0
    while pos + 3 <= len(section):
        tag, size = section[pos], struct.unpack_from("<H", section, pos + 1)[0]
        if tag == 255:
            break
        tags.setdefault(tag, section[pos + 3:pos + 3 + size])
        pos += 3 + size

    def text(tag: int) -> str:
        return tags.get(tag, b"").split(b"\x00", 1)[0].decode("latin-1").strip()

    def date(tag: int) -> str:
        raw = tags.get(tag, b"")
        if len(raw) < 4:
            return ""
        year, month, day = struct.unpack_from("<HBB", raw)
        return f"{year:04d}{month:02d}{day:02d}" if year and month and day else ""

    time = tags.get(26, b"")
    device = tags.get(14, b"")  # acquiring device: ..., model description at bytes 8-13, then strings
    model = device[8:14].split(b"\x00", 1)[0].decode("latin-1").strip() if len(device) >= 14 else ""
    strings = device[36:].split(b"\x00") if len(device) > 36 else []
    serial = strings[1].decode("latin-1").strip() if len(strings) > 1 else ""
    sex = tags.get(8, b"")
    return {
        "PatientID": text(2),
        "PatientName": person_name(text(0), text(1)),
        "PatientBirthDate": date(5),
        "PatientSex": _SEX.get(sex[0], "") if sex else "",
        **acquisition(date(25), f"{time[0]:02d}{time[1]:02d}{time[2]:02d}" if len(time) >= 3 else ""),
        "ManufacturerModelName": model,
        "DeviceSerialNumber": "" if serial.lower() == "unknown" else serial,
    }
