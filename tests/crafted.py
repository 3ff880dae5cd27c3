"""Hostile inputs made from real files: each reproduces one finding of the hardening probe
(issue 10). Shared by the fault tests and the fuzz suite. Every crafted DICOM object carries
:data:`MARKER_NAME` / :data:`MARKER_ID` as its patient, so a test can assert they never reach
the log."""

from __future__ import annotations

import copy
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

MARKER_NAME = "Zyxwv^Markerpatient"
MARKER_ID = "MRK-7731-PHI"
MORTARA = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"


def with_marker(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with the marker patient and a fresh SOP Instance UID."""
    ds = copy.deepcopy(ds)
    ds.PatientName = MARKER_NAME
    ds.PatientID = MARKER_ID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (its own transfer syntax)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _explicit_le(ds: Dataset) -> Dataset:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


# -- item 3: waveform encodings that do not match the data ---------------------------------
def bits_8_over_16(ds: Dataset) -> Dataset:
    """WaveformBitsAllocated 8 / interpretation SB over 16-bit samples (data twice as long)."""
    ds = with_marker(ds)
    for group in ds.WaveformSequence:
        group.WaveformBitsAllocated = 8
        group.WaveformSampleInterpretation = "SB"
    return ds


def data_longer_than_declared(ds: Dataset) -> Dataset:
    ds = with_marker(ds)
    group = ds.WaveformSequence[0]
    group.NumberOfWaveformSamples = int(group.NumberOfWaveformSamples) // 2
    return ds


def calibration(ds: Dataset, sensitivity: str | None = None, correction: str | None = None) -> Dataset:
    """Every channel's Channel Sensitivity and/or Correction Factor set to the given text."""
    ds = with_marker(ds)
    for group in ds.WaveformSequence:
        for channel in group.ChannelDefinitionSequence:
            if sensitivity is not None:
                channel.ChannelSensitivity = sensitivity
            if correction is not None:
                channel.ChannelSensitivityCorrectionFactor = correction
    return ds


# -- item 4: values that would forge or leak log lines -----------------------------------
FORGED = "2026-01-01 00:00:00,000 ERROR ecg_dicom.audit: FORGED LINE"


def newline_sop_class(ds: Dataset) -> bytes:
    """A SOP Class UID holding a newline and a complete forged log line."""
    ds = with_marker(ds)
    ds.SOPClassUID = "1.2.3\n" + FORGED
    return encode(_explicit_le(ds))


def stretched_uid(ds: Dataset) -> bytes:
    """The SOP Instance UID's length stretched so that its value swallows the elements after
    it, PatientName and PatientID included (explicit VR: a 2-byte length)."""
    ds = with_marker(ds)
    data = bytearray(encode(_explicit_le(ds)))
    tag = struct.pack("<HH", 0x0008, 0x0018) + b"UI"
    at = data.index(tag, 132 + 12)  # after the meta group's Media Storage SOP Instance UID
    (length,) = struct.unpack_from("<H", data, at + 6)
    name_at = data.index(MARKER_NAME.encode())
    struct.pack_into("<H", data, at + 6, min(0xFFFE, name_at - at - 8 + 64))
    return bytes(data)


def marker_labels(ds: Dataset) -> Dataset:
    """Lead I relabelled with the marker name (channel labels and code meanings go to reasons)."""
    ds = with_marker(ds)
    for group in ds.WaveformSequence:
        for channel in group.ChannelDefinitionSequence:
            source = channel.ChannelSourceSequence[0]
            source.CodeValue = "99999"
            source.CodeMeaning = MARKER_NAME
            channel.ChannelLabel = MARKER_ID
    ds.StudyInstanceUID = f"not a uid {MARKER_ID}"
    return ds


# -- item 5: size ----------------------------------------------------------------------------
def deflate_bomb(ds: Dataset, inflated_mib: int) -> Dataset:
    """Deflated Explicit VR LE with a private OB element of zeros: tiny deflated, huge inflated."""
    ds = with_marker(ds)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    block = ds.private_block(0x0099, "ECGDICOM TEST", create=True)
    block.add_new(0x01, "OB", bytes(inflated_mib << 20))
    return ds


def many_channels(ds: Dataset, channels: int) -> Dataset:
    """Group 1 declaring ``channels`` channels (data and definitions to match)."""
    ds = with_marker(ds)
    group = ds.WaveformSequence[0]
    n = int(group.NumberOfWaveformSamples)
    first = group.ChannelDefinitionSequence[0]
    group.ChannelDefinitionSequence = [copy.deepcopy(first) for _ in range(channels)]
    group.NumberOfWaveformChannels = channels
    group.WaveformData = np.zeros((n, channels), "<i2").tobytes()
    return ds


# -- item 6: inputs that escaped the typed validators --------------------------------------
def deep_sequence(ds: Dataset, depth: int = 400) -> bytes:
    """A Referenced Series Sequence nested ``depth`` items deep (undefined lengths)."""
    data = encode(_explicit_le(with_marker(ds)))
    start = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    sq_open = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    item_open = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sq_close = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (sq_open + item_open) * depth + (item_close + sq_close) * depth
    return data[:start] + nested + data[start:]


def npy_header(text: str, payload: bytes = b"\0" * 20000) -> bytes:
    """A version 1.0 .npy whose header is ``text`` (padded as numpy pads it)."""
    header = text.encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


NPY_SYNTAX_ERROR = "{'descr': '<f4', 'fortran_order': False, 'shape': (5000,), "
NPY_TOKEN_ERROR = "{'descr': '<f4', 'fortran_order': False, 'shape': (5000,), 'x': '''abc}"
NPY_NESTED = "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 500 + ")" * 500 + "}"


def corrupt_deflate(ds: Dataset) -> bytes:
    """File meta announcing Deflated Explicit VR LE over a data set that is not deflate."""
    data = bytearray(encode(deflate_bomb(ds, 0)))
    start = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    data[start:start + 64] = bytes(range(64)) * 1  # garbage where the deflate stream begins
    return bytes(data)


SIDECAR_DEEP = "[" * 100_000 + "]" * 100_000
SIDECAR_DIGITS = '{"fs": ' + "9" * 5000 + "}"


def read_real(shared_data: Path, relative: str = MORTARA) -> Dataset:
    return pydicom.dcmread(shared_data / relative)


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# -- vendor XML (GE MUSE, Philips Sierra, HL7 aECG) ---------------------------------------------
VENDOR_XML = ("vendor/ge_muse_xml/muse_ecg1.xml", "vendor/philips_sierra_xml/129DYPRG.XML",
              "vendor/hl7_aecg/ecg_hl7.xml", "vendor/philips_sierra_xml/3191723_ZZDEMOPTONLY_1-04_orig.xml")
BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE RestingECG [\n <!ENTITY a "aaaaaaaaaa">\n'
                  + "".join(f' <!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
                  + ']>\n<RestingECG><PatientDemographics><PatientID>&j;</PatientID></PatientDemographics></RestingECG>\n')
EXTERNAL_ENTITY = ('<?xml version="1.0"?>\n<!DOCTYPE RestingECG [ <!ENTITY x SYSTEM "file:///etc/passwd"> ]>\n'
                   '<RestingECG><PatientDemographics><PatientID>&x;</PatientID></PatientDemographics></RestingECG>\n')
# the numeric fields that give rate and scale, per format
VENDOR_NUMBERS = (r"(<SampleBase>)[^<]*", r"(<LeadAmplitudeUnitsPerBit>)[^<]*", r"(<LeadSampleCountTotal>)[^<]*",
                  r"(<samplingrate>)[^<]*", r"(<signalresolution>)[^<]*", r'(durationperchannel=")[^"]*',
                  r'(<increment value=")[^"]*', r'(<scale value=")[^"]*')
VENDOR_UNITS = (r"<LeadAmplitudeUnits>[^<]*</LeadAmplitudeUnits>", r'(<scale value="[^"]*") unit="[^"]*"',
                r"<signalresolution>[^<]*</signalresolution>", r'(<increment value="[^"]*") unit="[^"]*"')
VENDOR_NAME_FIELDS = (r"(<PatientLastName>)[^<]*", r"(<PatientID>)[^<]*", r"(<patientid>)[^<]*",
                      r'(<trialSubject>\s*<id root="[^"]*" extension=")[^"]*', r"(<subjectDemographicPerson>\s*<name>)[^<]*")


def vendor_xml_input(rng, sources: list[bytes]) -> bytes:
    """One mutated vendor XML file from the real ``sources`` (their bytes): entity bombs,
    external entities, wrong base64, leads of unequal length, rate or scale missing or absurd,
    units missing, byte flips, cuts; the patient is always the marker patient."""
    import re

    data = rng.choice(sources)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 (Philips 1.04): only byte-level damage
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out[: rng.randrange(len(out))] if rng.random() < 0.3 else out)
    text = data.decode("latin-1")
    for pattern in VENDOR_NAME_FIELDS:
        text = re.sub(pattern, lambda m: m.group(1) + (MARKER_ID if "ID" in pattern or "id" in pattern
                                                       else MARKER_NAME.split("^")[1]), text)
    kind = rng.randrange(10)
    if kind == 0:
        return (BILLION_LAUGHS if rng.random() < 0.5 else EXTERNAL_ENTITY).encode()
    if kind == 1:
        pattern = rng.choice(VENDOR_NUMBERS)
        value = rng.choice(("0", "-500", "1e309", "abc", "", "NaN", "inf", "5000000", "0.0000001", MARKER_NAME))
        text = re.sub(pattern, lambda m: m.group(1) + value, text, count=rng.choice((0, 1)))
    elif kind == 2:
        text = re.sub(rng.choice(VENDOR_UNITS), lambda m: m.group(1) if m.groups() else "", text)
    elif kind == 3:  # wrong base64
        text = re.sub(r"(<WaveFormData>|<parsedwaveforms[^>]*>)", lambda m: m.group(1) + rng.choice(("!!", "*", "=")),
                      text, count=1)
        text = text.replace("<digits>", "<digits>12 x3 ", 1)
    elif kind == 4:  # leads of unequal length
        text = re.sub(r"(<WaveFormData>)([^<]{40})", r"\1", text, count=1)
        text = re.sub(r"(<digits>)((?:\s*-?\d+){100})", r"\1", text, count=1)
        text = re.sub(r"(<parsedwaveforms[^>]*>)([^<]{4000})", r"\1", text, count=1)
    out = bytearray(text.encode("latin-1"))
    if kind >= 7:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        if kind == 9:
            del out[rng.randrange(len(out)):]
    return bytes(out)
