"""Read one ECG lead, in µV, from a DICOM waveform object.

Accepted SOP classes are the waveform classes that carry ECG channels (see
:data:`ECG_WAVEFORM_SOP_CLASSES`); anything else is refused with a message naming its SOP
class. The lead is found by its (003A,0208) *Channel Source Sequence* code (SCPECG
``5.6.3-9-x`` or MDC ``2:x``) and, failing that, by its (003A,0203) *Channel Label*.
When several multiplex groups hold the lead, the rhythm group is used: the longest one
in seconds, never a group labelled as median beats. Samples are decoded by pydicom's
``Dataset.waveform_array`` (raw × *Channel Sensitivity* × *Correction Factor* +
*Channel Baseline*) and converted to µV from the (003A,0211) *Channel Sensitivity Units
Sequence* code (UCUM ``uV``, ``mV``, ...).
"""

from __future__ import annotations

import struct
import tokenize
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.waveforms.numpy_handler import multiplex_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ecg_dicom.dicom.codes import AI_GROUP_LABEL, ECG_WAVEFORM_SOP_CLASSES, MDC_CODES, SCPECG_CODES
from ecg_dicom.errors import InputError, WaveformError
from ecg_dicom.leads import canonical_lead_name
from ecg_dicom.limits import DEFAULT_LIMITS, Limits, check_inflated_size, check_waveform_size
from ecg_dicom.logsafe import wire

# Uncompressed little-endian encodings: pydicom hands Waveform Data (OW) over as raw
# bytes and decodes them little-endian, so Explicit VR Big Endian would be misread.
SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
)

# (WaveformBitsAllocated, WaveformSampleInterpretation) pairs that hold linear integers.
# µ-law (MB) and A-law (AB) are audio encodings; 64-bit samples are not used for ECG.
LINEAR_SAMPLE_FORMATS: dict[tuple[int, str], int] = {
    (8, "SB"): 1, (8, "UB"): 1, (16, "SS"): 2, (16, "US"): 2, (32, "SL"): 4, (32, "UL"): 4,
}

# UCUM codes of (003A,0211) Channel Sensitivity Units -> factor to µV.
UNIT_TO_UV: dict[str, float] = {"nV": 1e-3, "uV": 1.0, "mV": 1e3, "V": 1e6}

# What pydicom raises on corrupt bytes (unknown VR, bad lengths, undecodable values,
# a corrupt deflate stream, sequences nested hundreds deep, values with thousands of digits).
_PARSE_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError,
                 IndexError, NotImplementedError, struct.error, zlib.error, RecursionError,
                 OverflowError, MemoryError, UnicodeError, SyntaxError, tokenize.TokenError)

# Microvolts per stored unit (sensitivity x correction factor x units) outside this range are
# not an ECG amplifier: real carts use 0.5-5 µV; 8-bit ambulatory recorders up to ~20 µV.
MIN_UV_PER_UNIT = 1e-3
MAX_UV_PER_UNIT = 1e3
# Channel Baseline (in the channel's units, as µV) beyond this is not a physical offset
MAX_BASELINE_UV = 1e6

# What reading past the end of a file raises in pydicom (EOF, a short struct.unpack, "No tag to read")
_SHORT_READ_ERRORS = (EOFError, struct.error, OSError)

_CODE_TO_LEAD: dict[tuple[str, str], str] = {
    **{("SCPECG", code): lead for lead, code in SCPECG_CODES.items()},
    **{("MDC", code): lead for lead, code in MDC_CODES.items()},
}


@dataclass(frozen=True)
class DicomLead:
    """One lead read from a DICOM waveform object.

    signal_uv: (N,) float64 µV; fs: sampling frequency of its multiplex group in Hz;
    lead: canonical lead name (``"I"``, ``"II"``, ...); dataset: the whole source object.
    """

    signal_uv: np.ndarray
    fs: float
    lead: str
    dataset: Dataset


def sop_class_text(uid: str) -> str:
    """``"<name> (<uid>)"`` for a SOP Class UID, e.g. ``CT Image Storage (1.2.840....2)``."""
    name = ECG_WAVEFORM_SOP_CLASSES.get(uid) or UID(uid).name
    return f"{name} ({uid})" if name != uid else f"unknown SOP class ({wire(uid)})"


def check_deflated_file(path: Path, limits: Limits) -> None:
    """For a Deflated Explicit VR Little Endian file: refuse it when its data set inflates
    beyond ``limits.max_inflated_bytes`` (or is corrupt), before pydicom inflates it whole."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except _PARSE_ERRORS + (InvalidDicomError,):
        return  # _read_file says what is wrong with it
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    with open(path, "rb") as fh:
        data = fh.read()
    # the data set starts after the preamble, 'DICM' and the group 0002 elements
    start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength", 0) or 0)
    if "FileMetaInformationGroupLength" not in meta or start > len(data):
        raise WaveformError("deflated file without a usable File Meta Information Group Length (0002,0000)")
    try:
        check_inflated_size(memoryview(data)[start:], limits)
    except InputError as exc:
        raise WaveformError(str(exc)) from None


def truncation(path: str | Path) -> str | None:
    """Why a DICOM Part 10 file looks cut short, or None.

    Walks the data set's elements without decoding them: an element whose declared length
    runs past the end of the file, a file that ends inside an element or right after its
    File Meta Information, is cut short (typically still being written). Deflated data sets
    are not judged. A corrupt file that is not cut short is None: the reader says what is wrong.
    """
    from pydicom.filereader import (
        _read_file_meta_info,
        data_element_generator,
        read_preamble,
    )

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            try:
                read_preamble(fp, False)
                meta = _read_file_meta_info(fp)
            except _SHORT_READ_ERRORS:
                return "ends inside its File Meta Information"
            except (InvalidDicomError, *_PARSE_ERRORS):
                return None
            syntax = UID(str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
            if syntax.is_deflated or not syntax.is_transfer_syntax:
                return None
            if fp.tell() >= size:
                return "ends right after its File Meta Information"
            for elem in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=1):
                length = getattr(elem, "length", 0xFFFFFFFF)   # a parsed sequence has no raw length
                if length != 0xFFFFFFFF and elem.value_tell + length > size:
                    return f"element {elem.tag} runs past the end of the file"
    except _SHORT_READ_ERRORS:
        return "ends inside a data element"
    except (RecursionError, *_PARSE_ERRORS):
        return None  # corrupt rather than cut short: the reader says what is wrong
    return None


def _read_file(path: Path) -> Dataset:
    """dcmread ``path`` as a DICOM Part 10 file; every failure becomes a WaveformError."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise WaveformError(
            "not a DICOM Part 10 file: no 128-byte preamble, 'DICM' prefix and File Meta"
            " Information"
        ) from exc
    except _PARSE_ERRORS as exc:
        raise WaveformError(f"unreadable DICOM file: {_parse_error_text(exc)}") from exc
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise WaveformError("File Meta Information has no Transfer Syntax UID (0002,0010)")
    return ds


def _check_encoding(ds: Dataset) -> None:
    """Refuse a transfer syntax whose Waveform Data pydicom cannot hand over as LE bytes."""
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if tsyntax is None:
        # A Dataset built in memory or received over the network without meta: the
        # encoding pydicom read it with, if any, is the one that counts.
        encoding = getattr(ds, "original_encoding", (None, None))
        if encoding[1] is False:
            raise WaveformError("big-endian dataset: Waveform Data must be little-endian")
        return
    if tsyntax not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(UID(ts).name for ts in SUPPORTED_TRANSFER_SYNTAXES)
        raise WaveformError(
            f"unsupported transfer syntax {UID(tsyntax).name} ({tsyntax}) for waveform data;"
            f" expected one of: {names}"
        )


def _parse_error_text(exc: BaseException) -> str:
    """One line for an exception a parser raised (its message may quote input bytes)."""
    if isinstance(exc, RecursionError):
        return "sequences nested too deeply"
    if isinstance(exc, MemoryError):
        return "a value too large to hold in memory"
    return f"{type(exc).__name__}: {wire(exc, 120)}"


def _lead_of_channel(channel: Dataset) -> str | None:
    """Canonical lead name of one Channel Definition item: its source code, else its label."""
    for source in channel.get("ChannelSourceSequence", []):
        key = (str(source.get("CodingSchemeDesignator", "")).strip(), str(source.get("CodeValue", "")).strip())
        if key in _CODE_TO_LEAD:
            return _CODE_TO_LEAD[key]
    label = channel.get("ChannelLabel")
    if label:
        try:
            return canonical_lead_name(str(label))
        except KeyError:
            return None
    return None


def _channel_name(channel: Dataset) -> str:
    """A readable name for a channel that is not a standard lead (for error messages)."""
    lead = _lead_of_channel(channel)
    if lead:
        return lead
    for source in channel.get("ChannelSourceSequence", []):
        meaning = source.get("CodeMeaning") or source.get("CodeValue")
        if meaning:
            return wire(meaning, 32)
    label = channel.get("ChannelLabel")
    return wire(label, 32) if label else "unnamed channel"


def _is_median_group(group: Dataset) -> bool:
    return "MEDIAN" in str(group.get("MultiplexGroupLabel", "")).upper()


def _group_fs(group: Dataset, index: int) -> float:
    try:
        fs = float(group.get("SamplingFrequency", 0) or 0)
    except (TypeError, ValueError):
        fs = 0.0
    if not np.isfinite(fs) or fs <= 0:
        raise WaveformError(
            f"multiplex group {index + 1} has no valid Sampling Frequency (003A,001A):"
            f" {wire(group.get('SamplingFrequency'), 32)}"
        )
    return fs


def _check_group(group: Dataset, index: int, limits: Limits = DEFAULT_LIMITS) -> tuple[int, int]:
    """Check one multiplex group's layout against its data; return (channels, samples)."""
    required = ("NumberOfWaveformChannels", "NumberOfWaveformSamples", "WaveformBitsAllocated",
                "WaveformSampleInterpretation", "WaveformData", "ChannelDefinitionSequence")
    missing = [keyword for keyword in required if group.get(keyword) in (None, "")]
    if missing:
        raise WaveformError(f"multiplex group {index + 1} lacks {', '.join(missing)}")
    bits = int(group.WaveformBitsAllocated)
    interpretation = str(group.WaveformSampleInterpretation)
    if (bits, interpretation) not in LINEAR_SAMPLE_FORMATS:
        raise WaveformError(
            f"multiplex group {index + 1}: unsupported samples: {bits} bits allocated,"
            f" interpretation {wire(interpretation, 16)} (supported: "
            + ", ".join(f"{b}-bit {i}" for b, i in LINEAR_SAMPLE_FORMATS) + ")"
        )
    channels = int(group.NumberOfWaveformChannels)
    samples = int(group.NumberOfWaveformSamples)
    if channels <= 0 or samples <= 0:
        raise WaveformError(f"multiplex group {index + 1} has {channels} channels x {samples} samples")
    try:
        check_waveform_size(channels, samples, limits, index + 1)
    except InputError as exc:
        raise WaveformError(str(exc)) from None
    if len(group.ChannelDefinitionSequence) != channels:
        raise WaveformError(
            f"multiplex group {index + 1}: {len(group.ChannelDefinitionSequence)} channel definitions"
            f" for {channels} channels"
        )
    expected = channels * samples * LINEAR_SAMPLE_FORMATS[(bits, interpretation)]
    present = len(group.WaveformData)
    if present < expected:
        raise WaveformError(
            f"waveform data truncated: multiplex group {index + 1} holds {present} bytes, expected"
            f" {expected} ({channels} channels x {samples} samples x {bits} bits)"
        )
    # One pad byte makes an odd length even; anything more means the declared layout (bits
    # allocated, channels, samples) is not the data's: decoding it would scramble the leads.
    if present > expected + (expected % 2):
        raise WaveformError(
            f"waveform data longer than declared: multiplex group {index + 1} holds {present} bytes,"
            f" {channels} channels x {samples} samples x {bits} bits is {expected}"
        )
    for ch_index, channel in enumerate(group.ChannelDefinitionSequence):
        stored = channel.get("WaveformBitsStored")
        if stored not in (None, "") and not 1 <= int(stored) <= bits:
            raise WaveformError(
                f"multiplex group {index + 1}, channel {ch_index + 1}: {int(stored)} bits stored"
                f" in {bits}-bit samples"
            )
    return channels, samples


def _channel_scale(channel: Dataset, lead: str) -> tuple[float, float]:
    """(µV per stored unit, baseline µV) of one channel: sensitivity x correction factor in
    its units, converted to µV. Refuses a non-physical or sign-inverting calibration."""
    if channel.get("ChannelSensitivity") in (None, ""):
        raise WaveformError(f"lead {lead} has no Channel Sensitivity (003A,0210): amplitude unknown")
    factor = _units_factor(channel, lead)
    sensitivity = _finite(channel.get("ChannelSensitivity"), lead, "Channel Sensitivity (003A,0210)")
    correction = channel.get("ChannelSensitivityCorrectionFactor")
    correction = 1.0 if correction in (None, "") else _finite(
        correction, lead, "Channel Sensitivity Correction Factor (003A,0212)")
    baseline = channel.get("ChannelBaseline")
    baseline = 0.0 if baseline in (None, "") else _finite(baseline, lead, "Channel Baseline (003A,0213)")
    if sensitivity <= 0 or correction <= 0:
        raise WaveformError(
            f"lead {lead}: non-physical calibration (sensitivity {sensitivity:g}, correction factor"
            f" {correction:g}): a value <= 0 would invert or erase the lead"
        )
    uv_per_unit = sensitivity * correction * factor
    if not MIN_UV_PER_UNIT <= uv_per_unit <= MAX_UV_PER_UNIT:
        raise WaveformError(
            f"lead {lead}: non-physical calibration: {uv_per_unit:g} µV per stored unit (sensitivity x"
            f" correction factor), expected {MIN_UV_PER_UNIT:g}-{MAX_UV_PER_UNIT:g}"
        )
    if abs(baseline * factor) > MAX_BASELINE_UV:
        raise WaveformError(f"lead {lead}: non-physical Channel Baseline {baseline * factor:g} µV")
    return uv_per_unit, baseline * factor


def _finite(value: object, lead: str, what: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise WaveformError(f"lead {lead}: {what} is not a number: {wire(value, 32)}") from None
    if not np.isfinite(number):
        raise WaveformError(f"lead {lead}: {what} is not finite ({number})")
    return number


def _units_factor(channel: Dataset, lead: str) -> float:
    """Factor from the channel's sensitivity units to µV."""
    units = channel.get("ChannelSensitivityUnitsSequence")
    if not units:
        raise WaveformError(f"lead {lead} has no Channel Sensitivity Units Sequence (003A,0211)")
    code = str(units[0].get("CodeValue", "")).strip()
    if code in ("µV", "μV"):
        code = "uV"
    if code not in UNIT_TO_UV:
        raise WaveformError(
            f"lead {lead} is in units {wire(code, 16)}, not a voltage (expected one of {sorted(UNIT_TO_UV)})"
        )
    return UNIT_TO_UV[code]


def read_dicom_lead(source: str | Path | Dataset, lead: str, limits: Limits = DEFAULT_LIMITS) -> DicomLead:
    """Read ``lead`` from a DICOM ECG waveform object (a path or an already-read Dataset).

    Parameters
    ----------
    source : str, Path or pydicom Dataset
        A DICOM Part 10 file, or a dataset already read (from a file or the network).
    lead : str
        The lead wanted, in any common spelling (``"I"``, ``"ii"``, ``"Lead II"``).
    limits : Limits
        Channels and samples per multiplex group at most; for a file, its inflated size.

    Returns
    -------
    DicomLead
        ``signal_uv`` (N,) float64 µV from the rhythm group, its ``fs`` in Hz.

    Raises
    ------
    WaveformError
        With a one-line reason: not DICOM, no meta or transfer syntax, unsupported
        transfer syntax, wrong SOP class, no waveform, no such lead (the leads present
        are listed), unsupported sample format, data shorter or longer than declared,
        beyond the limits, unknown units, non-physical calibration.
    """
    try:
        wanted = canonical_lead_name(lead)
    except KeyError:
        raise WaveformError(f"{lead!r} is not one of the 12 standard leads") from None
    if not isinstance(source, Dataset):
        check_deflated_file(Path(source), limits)
    ds = source if isinstance(source, Dataset) else _read_file(Path(source))
    try:
        return _read_lead(ds, wanted, limits)
    except _PARSE_ERRORS as exc:
        # pydicom parses values (and nested sequences) lazily: corrupt bytes surface here.
        raise WaveformError(f"malformed DICOM object: {_parse_error_text(exc)}") from exc


def _check_waveform_object(ds: Dataset) -> list[Dataset]:
    """The multiplex groups of an ECG waveform object; refuses an encoding, SOP class or
    object without a Waveform Sequence that is not one."""
    _check_encoding(ds)
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not sop_class:
        raise WaveformError("no SOP Class UID (0008,0016): not a composite DICOM object")
    if sop_class not in ECG_WAVEFORM_SOP_CLASSES:
        raise WaveformError(
            f"SOP class {sop_class_text(sop_class)} is not an ECG waveform; accepted: "
            + ", ".join(ECG_WAVEFORM_SOP_CLASSES.values())
        )
    groups = ds.get("WaveformSequence")
    if not groups:
        raise WaveformError(f"{sop_class_text(sop_class)} object has no Waveform Sequence (5400,0100)")
    return list(groups)


def _rhythm_channels(groups: list[Dataset], limits: Limits) -> tuple[dict[str, tuple[float, int, int]], list[str]]:
    """Where each standard lead is in the rhythm groups: lead -> (duration s, group index,
    channel index) of the longest rhythm group holding it (among equals, the first; median
    groups never), and the readable name of every rhythm channel, in order."""
    best: dict[str, tuple[float, int, int]] = {}
    others: list[str] = []
    for index, group in enumerate(groups):
        _, samples = _check_group(group, index, limits)
        if _is_median_group(group):
            continue
        for ch_index, channel in enumerate(group.ChannelDefinitionSequence):
            lead = _lead_of_channel(channel)
            others.append(_channel_name(channel))
            if lead is None:
                continue
            candidate = (samples / _group_fs(group, index), index, ch_index)
            if lead not in best or candidate[0] > best[lead][0]:
                best[lead] = candidate
    return best, others


def _lead_samples(ds: Dataset, groups: list[Dataset], lead: str, where: tuple[float, int, int],
                  decoded: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """(N,) float64 µV of ``lead`` at ``where`` (see :func:`_rhythm_channels`); ``decoded``:
    the raw samples of groups already decoded, by group index (filled in)."""
    _, g_index, c_index = where
    uv_per_unit, baseline_uv = _channel_scale(groups[g_index].ChannelDefinitionSequence[c_index], lead)
    decoded = {} if decoded is None else decoded
    if g_index not in decoded:
        decoded[g_index] = multiplex_array(ds, g_index, as_raw=True)
    return decoded[g_index][:, c_index].astype(np.float64) * uv_per_unit + baseline_uv


def _read_lead(ds: Dataset, wanted: str, limits: Limits, decoded: dict[int, np.ndarray] | None = None) -> DicomLead:
    """The body of :func:`read_dicom_lead` for a dataset in hand and a canonical lead name;
    ``decoded``: see :func:`_lead_samples`."""
    groups = _check_waveform_object(ds)
    found, names = _rhythm_channels(groups, limits)
    if wanted not in found:
        listed = ", ".join(dict.fromkeys(name for name in names if name != wanted)) or "none"
        raise WaveformError(f"no lead {wanted} in the rhythm waveform; leads present: {listed}")
    g_index = found[wanted][1]
    return DicomLead(_lead_samples(ds, groups, wanted, found[wanted], decoded), _group_fs(groups[g_index], g_index),
                     wanted, ds)


def read_dicom_leads(source: str | Path | Dataset, limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Every standard lead of a DICOM ECG waveform object's rhythm data that shares the rate
    and length of its lead I (else of its first lead): name -> (N,) float64 µV.

    The leads come as :func:`read_dicom_lead` reads each one (the longest rhythm group
    holding it, median-beat groups ignored, units and calibration applied). A lead whose
    calibration or units are unusable is left out rather than refusing the object: this is
    what the choice of input lead and the accuracy monitor read, beside the lead the model
    takes. Raises :class:`WaveformError` for an object :func:`read_dicom_lead` refuses whole.
    """
    if not isinstance(source, Dataset):
        check_deflated_file(Path(source), limits)
    ds = source if isinstance(source, Dataset) else _read_file(Path(source))
    try:
        return _all_leads(ds, limits, {})
    except _PARSE_ERRORS as exc:
        raise WaveformError(f"malformed DICOM object: {_parse_error_text(exc)}") from exc


def read_dicom_input_leads(path: str | Path, wanted: Sequence[str], limits: Limits = DEFAULT_LIMITS
                           ) -> tuple[list[DicomLead], dict[str, np.ndarray]]:
    """One read of a DICOM ECG file for the model's input: the ``wanted`` leads, each as
    :func:`read_dicom_lead` reads it (and refused with its reasons), and every lead
    :func:`read_dicom_leads` gives. The file is parsed once and each multiplex group decoded
    once (a cart's 12-lead object: ~20 ms saved per input against reading it per lead)."""
    names = []
    for lead in wanted:
        try:
            names.append(canonical_lead_name(lead))
        except KeyError:
            raise WaveformError(f"{lead!r} is not one of the 12 standard leads") from None
    check_deflated_file(Path(path), limits)
    ds = _read_file(Path(path))
    decoded: dict[int, np.ndarray] = {}
    try:
        chosen = [_read_lead(ds, name, limits, decoded) for name in names]
        return chosen, _all_leads(ds, limits, decoded)
    except _PARSE_ERRORS as exc:
        raise WaveformError(f"malformed DICOM object: {_parse_error_text(exc)}") from exc


def _all_leads(ds: Dataset, limits: Limits, decoded: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The body of :func:`read_dicom_leads`; ``decoded``: see :func:`_lead_samples`."""
    groups = _check_waveform_object(ds)
    found, _ = _rhythm_channels(groups, limits)
    if not found:
        return {}
    anchor = found.get("I") or next(iter(found.values()))
    anchor_group = groups[anchor[1]]
    shape = (_group_fs(anchor_group, anchor[1]), int(anchor_group.NumberOfWaveformSamples))
    leads: dict[str, np.ndarray] = {}
    for lead, where in found.items():
        group = groups[where[1]]
        if (_group_fs(group, where[1]), int(group.NumberOfWaveformSamples)) != shape:
            continue
        try:
            leads[lead] = _lead_samples(ds, groups, lead, where, decoded)
        except WaveformError:
            continue
    return leads


@dataclass(frozen=True)
class ResultObject:
    """One of our 12-lead result objects read back (for the report page).

    leads_uv: (12, N) float64 µV in LEADS_12 order; fs: Hz; input_lead: the measured lead
    (group 1); sigma_uv: per AI lead the RMS uncertainty written in its derivation text (µV);
    model_name / model_version: from the equipment attributes; quality_text: the signal-quality
    annotation, if any; dataset: the object; reconstructed: False for a recorded ECG (a cart's
    own object: no group of ours labelled AI RECONSTRUCTED), whose 12 leads are all measured.
    """

    leads_uv: np.ndarray
    fs: float
    input_lead: str
    sigma_uv: dict[str, float]
    model_name: str
    model_version: str
    quality_text: str | None
    dataset: Dataset
    reconstructed: bool = True


def read_result_object(source: str | Path | Dataset) -> ResultObject:
    """Read a 12-lead result written by :mod:`ecg_dicom.dicom.writer` (all 12 leads, µV), or a
    recorded 12-lead ECG (``reconstructed`` False).

    Raises WaveformError when a lead is missing or the object is not a waveform.
    """
    import re

    from ecg_dicom.leads import LEADS_12

    ds = source if isinstance(source, Dataset) else _read_file(Path(source))
    try:
        groups = ds.get("WaveformSequence") or []
        leads: dict[str, np.ndarray] = {}
        sigma: dict[str, float] = {}
        fs = None
        input_lead = None
        for index, group in enumerate(groups):
            _check_group(group, index)
            if _is_median_group(group):
                continue
            values = ds.waveform_array(index)
            fs = fs or _group_fs(group, index)
            for ch, channel in enumerate(group.ChannelDefinitionSequence):
                lead = _lead_of_channel(channel)
                if lead is None or lead in leads:
                    continue
                leads[lead] = np.asarray(values[:, ch], dtype=np.float64) * _units_factor(channel, lead)
                if str(group.get("WaveformOriginality", "")) == "ORIGINAL" or \
                        str(group.get("MultiplexGroupLabel", "")) == "INPUT LEAD":
                    input_lead = input_lead or lead
                found = re.search(r"sigma (\d+(?:\.\d+)?) uV", str(channel.get("ChannelDerivationDescription", "")))
                if found:
                    sigma[lead] = float(found.group(1))
        missing = [lead for lead in LEADS_12 if lead not in leads]
        if missing or fs is None:
            raise WaveformError(f"not a 12-lead result: leads {', '.join(missing) or 'all'} missing")
        quality = [str(a.get("UnformattedTextValue", "")) for a in ds.get("WaveformAnnotationSequence", [])
                   if str(a.get("UnformattedTextValue", "")).startswith("Signal quality")]
        versions = ds.get("SoftwareVersions") or []
        versions = [versions] if isinstance(versions, str) else list(versions)
        reconstructed = any(str(g.get("MultiplexGroupLabel", "")) == AI_GROUP_LABEL for g in groups)
        return ResultObject(np.stack([leads[lead] for lead in LEADS_12]), float(fs), input_lead or "I", sigma,
                            str(ds.get("ManufacturerModelName", "") or "unknown model"),
                            str(versions[-1]) if versions else "unknown", quality[0] if quality else None, ds,
                            reconstructed)
    except _PARSE_ERRORS as exc:
        raise WaveformError(f"malformed DICOM object: {type(exc).__name__}: {exc}") from exc
