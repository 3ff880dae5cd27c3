"""Write a reconstructed 12-lead ECG as DICOM 12-Lead ECG Waveform Storage objects.

Layout of every object (PS3.3 A.34.3; validated with dicom3tools' ``dciodvfy``):

- Two multiplex groups with the same rate and length: group 1 holds the input lead
  (``WaveformOriginality`` ORIGINAL, or DERIVED when it had to be resampled); group 2 holds
  the 11 other leads in :data:`~ecg_dicom.leads.LEADS_12` order, DERIVED, each with a
  *Channel Derivation Description* (AI-predicted, or computed from I and II).
- Samples are ``SS`` 16-bit. Each channel gets its own *Channel Sensitivity* in µV (UCUM
  ``uV``): 1 µV per step when the channel's peak fits int16 (±32.767 mV, every real ECG),
  otherwise the smallest of 2, 2.5, 5 × 10^k µV that holds the peak, so nothing is clipped.
- Channel sources are SCPECG codes with Coding Scheme Version "1.3" (CID 3001).
- The IOD allows 200–1000 Hz: an input outside is resampled (linear interpolation, all 12
  leads alike, so the limb-lead identities survive) to 200 or 1000 Hz.
- The IOD allows at most 16 384 samples per channel. A longer record is split in time into
  several 12-lead objects of equal length (``ceil(N / 16384)`` parts) in the same series,
  with consecutive Instance Numbers and Acquisition DateTimes shifted by each part's start;
  every part stays a 12-lead object, the class ECG viewers and PACS display best.

Provenance (shared with the report's PDF object, see :mod:`.provenance`): the Patient and
Study attributes listed there are copied from the source (only those, each checked against
its VR); the result joins the source's study under a new
series described as AI-reconstructed and not for diagnosis; *Referenced Instance Sequence*
points at the source instance, *Contributing Equipment Sequence* names the model and its
version, and a *Waveform Annotation* says the same in words. A source whose Study Instance
UID is not a valid UID (e.g. the ECG Toolkit example's ``…091000.``) cannot be copied
without making our object invalid: the result goes into a replacement study whose UID is
derived from the invalid one (so every result from that source study lands together), and
a warning is logged; an invalid source SOP Instance UID cannot be referenced either. Both
values are kept, as received, in the *Original Attributes Sequence* (*Nonconforming Modified
Attributes*, the DICOM place for values that do not conform to their VR; see
:func:`ecg_dicom.dicom.provenance.original_invalid_uids`), so that PACS or a script can
still relate the result to its source; dciodvfy stays clean.
A ``.npy`` input (no source) takes its Patient and Study attributes from its sidecar's DICOM
keywords (:mod:`ecg_dicom.sidecar`, validated there): with a Study Instance UID the result
joins that study; without one it gets a new study derived from the input (Study ID: the
content hash's first 16 digits). Its Acquisition DateTime is the sidecar's, else the
conversion time. Without a PatientID the result says the patient is unknown, in words PACS
shows: Patient's Name ``UNKNOWN``, a Patient ID ``UNKNOWN-<16 hex digits of the input>`` made
up for this recording alone (so PACS never files unrelated recordings under one blank
patient), Issuer of Patient ID ``ecg-dicom (no patient identity given)``, a Patient Comment
and the waveform annotation. The recording device (sidecar ``Manufacturer``...; a DICOM
source's own General Equipment) is named as *Acquisition Equipment* in the Contributing
Equipment Sequence, beside the ecg-dicom *Processing Equipment* item.

UIDs are deterministic (``generate_uid(entropy_srcs=...)``) from the source SOP Instance UID
(or the content hash), the model version and the input lead, so converting the same input
twice gives the same SOP Instance UIDs and a replay never duplicates an object at PACS.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import DSfloat

from ecg_dicom.core.preprocess import resample_fs
from ecg_dicom.dicom.codes import AI_GROUP_LABEL, SCPECG_CODES, TWELVE_LEAD_ECG_STORAGE
from ecg_dicom.dicom.provenance import (
    NOT_FOR_DIAGNOSIS,
    acquisition_start,
    add_file_meta,
    code_item,
    common_attributes,
    derived_uid,
    format_dt,
    notice_text,
    complete_source_description,
    set_series,
    source_reference,
    uid_anchor,
)
from ecg_dicom.files import safe_stem, write_bytes_atomic
from ecg_dicom.leads import DERIVED_LIMB_LEADS, LEADS_12, MODEL_INPUTS, input_leads_of

MIN_FS_HZ = 200.0
MAX_FS_HZ = 1000.0
MAX_SAMPLES = 16384
INT16_MAX = 32767
SERIES_NUMBER = 9001
SERIES_DESCRIPTION = NOT_FOR_DIAGNOSIS

_SENSITIVITY_STEPS = (1.0, 2.0, 2.5, 5.0)


def channel_sensitivity(signal_uv: np.ndarray) -> float:
    """µV per int16 step for one channel: 1 µV when its peak fits int16, else the smallest
    2, 2.5 or 5 × 10^k µV that does (so the channel is never clipped)."""
    need = float(np.max(np.abs(signal_uv), initial=0.0)) / INT16_MAX
    if need <= 1.0:
        return 1.0
    decade = 10.0 ** math.floor(math.log10(need))
    for step in (*_SENSITIVITY_STEPS, 10.0):
        if step * decade >= need:
            return step * decade
    raise AssertionError("unreachable: 10 x decade always holds the peak")


def output_fs(fs: float) -> float:
    """The sampling frequency written: ``fs`` clipped to the IOD's 200–1000 Hz."""
    return float(min(max(fs, MIN_FS_HZ), MAX_FS_HZ))


def split_bounds(n_samples: int, max_samples: int = MAX_SAMPLES) -> list[tuple[int, int]]:
    """(start, stop) of ``ceil(n / max)`` near-equal consecutive parts of at most ``max``."""
    parts = max(1, math.ceil(n_samples / max_samples))
    edges = np.linspace(0, n_samples, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def written_samples(n_samples: int, fs: float) -> int:
    """Samples per channel after resampling ``n_samples`` at ``fs`` Hz to :func:`output_fs`."""
    fs_out = output_fs(fs)
    return n_samples if fs_out == fs else int(round(n_samples * fs_out / fs))


def dicom_file_names(stem: str, n_samples: int, fs: float) -> list[str]:
    """The files :func:`write_ecg_dicom` writes for a (12, ``n_samples``) record at ``fs`` Hz:
    ``<stem>.dcm``, or ``<stem>_001.dcm``, ``<stem>_002.dcm``... when it is split."""
    stem = safe_stem(stem)
    parts = len(split_bounds(written_samples(n_samples, fs)))
    return [f"{stem}.dcm"] if parts == 1 else [f"{stem}_{number:03d}.dcm" for number in range(1, parts + 1)]


def _channel(lead: str, sensitivity: float, derivation: str | None) -> Dataset:
    channel = Dataset()
    channel.ChannelLabel = lead
    channel.ChannelSourceSequence = Sequence([code_item(SCPECG_CODES[lead], "SCPECG", f"Lead {lead}", "1.3")])
    channel.ChannelSensitivity = DSfloat(sensitivity, auto_format=True)
    channel.ChannelSensitivityUnitsSequence = Sequence([code_item("uV", "UCUM", "microvolt", "1.4")])
    channel.ChannelSensitivityCorrectionFactor = 1
    channel.ChannelBaseline = 0
    channel.ChannelSampleSkew = 0
    channel.WaveformBitsStored = 16
    if derivation:
        channel.ChannelDerivationDescription = derivation
    return channel


def _multiplex_group(leads: list[str], signals_uv: np.ndarray, fs: float, originality: str,
                     label: str, derivations: list[str | None]) -> Dataset:
    """One multiplex group: signals_uv (channels, samples) µV -> SS 16-bit samples."""
    sensitivities = [channel_sensitivity(row) for row in signals_uv]
    raw = np.round(signals_uv / np.asarray(sensitivities)[:, None])
    raw = np.clip(raw, -INT16_MAX - 1, INT16_MAX).astype("<i2")
    group = Dataset()
    group.MultiplexGroupLabel = label
    group.WaveformOriginality = originality
    group.NumberOfWaveformChannels = len(leads)
    group.NumberOfWaveformSamples = signals_uv.shape[1]
    group.SamplingFrequency = DSfloat(fs, auto_format=True)
    group.ChannelDefinitionSequence = Sequence(
        [_channel(lead, sens, der) for lead, sens, der in zip(leads, sensitivities, derivations)])
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    # Waveform Data is interleaved (C = channel, S = sample): C1S1, C2S1, ..., CnS1, C1S2, ...
    group.WaveformData = np.ascontiguousarray(raw.T).tobytes()
    return group


def _derivation(lead: str, input_lead: str, sigma_uv: float | None) -> str:
    """Channel Derivation Description (LO, <= 64 characters) of a lead we did not measure."""
    source = "leads I and II" if input_lead not in ("I", "II") else f"lead {input_lead}"
    if sigma_uv is None:
        return ("Computed from leads I and II (Einthoven/Goldberger)" if lead in DERIVED_LIMB_LEADS
                else f"Predicted from {source} by an AI model")
    sigma = f"; sigma {sigma_uv:.0f} uV"
    return (f"Computed from I and II (Einthoven/Goldberger){sigma}" if lead in DERIVED_LIMB_LEADS
            else f"Predicted from {source} by an AI model{sigma}")


def _annotation(group_number: int, text: str) -> Dataset:
    item = Dataset()
    item.UnformattedTextValue = text
    item.ReferencedWaveformChannels = [group_number, 0]  # 0: every channel of the group
    return item


def build_ecg_datasets(leads_uv: np.ndarray, fs: float, model_version: str, input_lead: str,
                       source: Dataset | None, content_hash: str | None,
                       now: datetime | None = None, attributes: Mapping[str, str] | None = None,
                       quality_text: str | None = None, sigma_uv: dict[str, float] | None = None,
                       uncertainty_text: str | None = None) -> list[Dataset]:
    """Build the 12-Lead ECG Waveform Storage object(s) for one reconstruction
    (:func:`iter_ecg_datasets`, all at once)."""
    return list(iter_ecg_datasets(leads_uv, fs, model_version, input_lead, source, content_hash, now, attributes,
                                  quality_text, sigma_uv, uncertainty_text))


def iter_ecg_datasets(leads_uv: np.ndarray, fs: float, model_version: str, input_lead: str,
                      source: Dataset | None, content_hash: str | None,
                      now: datetime | None = None, attributes: Mapping[str, str] | None = None,
                      quality_text: str | None = None,
                      sigma_uv: dict[str, float] | None = None, source_complete: bool = False,
                      uncertainty_text: str | None = None) -> Iterator[Dataset]:
    """Build the 12-Lead ECG Waveform Storage object(s) for one reconstruction, one part at a
    time (an hour-long record is ~110 objects: only one is built in memory at once).

    Parameters
    ----------
    leads_uv : (12, N) array, µV, in LEADS_12 order (input lead included as given).
    fs : sampling frequency of ``leads_uv`` in Hz (resampled to 200–1000 Hz if outside).
    model_version : the reconstructing model's version (provenance and UIDs).
    input_lead : the lead(s) acquired ("I", "II", or "I+II": both); the others are derived.
    source : the source DICOM object, or None for a .npy input.
    content_hash : sha256 of the input file; the UID anchor when there is no source.
    now : the conversion time (ContentDate/Time), default the current local time.
    attributes : for a .npy input, the DICOM keywords its sidecar gave (patient, study,
        acquisition time, device), already validated; ignored with a DICOM source.
    quality_text : the signal-quality gate's one-line summary of the input lead, written as
        a third waveform annotation on group 1 (the input lead).
    source_complete : the source holds all 12 leads, measured: the series description and
        the notice say so (a PACS shows this result beside the real one).
    sigma_uv : the model's RMS uncertainty (µV) per lead not measured, written into each
        channel's derivation description ("...; sigma 85 uV").
    uncertainty_text : the record's reconstruction uncertainty in words ("Reconstruction
        uncertainty 0.42 (threshold 0.35): V2–V4 unreliable for this record"), an annotation
        on group 2 (the AI leads).

    Yields
    ------
    Dataset
        One object, or several split in time when the record exceeds 16 384 samples
        per channel at the written rate; each with File Meta Information.
    """
    leads_uv = np.asarray(leads_uv)
    if leads_uv.dtype.kind not in "fiu":
        raise ValueError(f"leads_uv must be numeric, got {leads_uv.dtype}")
    if leads_uv.ndim != 2 or leads_uv.shape[0] != len(LEADS_12) or leads_uv.shape[1] == 0:
        raise ValueError(f"leads_uv must be (12, N) with N > 0, got {leads_uv.shape}")
    if not np.all(np.isfinite(leads_uv)):
        raise ValueError("leads_uv holds NaN or infinite values")
    if input_lead not in MODEL_INPUTS:
        raise ValueError(f"input lead {input_lead!r} is not one of {MODEL_INPUTS}")
    measured = list(input_leads_of(input_lead))
    measured_text = " and ".join(measured)
    if not (fs > 0 and math.isfinite(fs)):
        raise ValueError(f"sampling frequency must be a positive number, got {fs!r}")
    anchor = uid_anchor(source, content_hash)
    now = now or datetime.now()
    attributes = {} if source is not None or attributes is None else dict(attributes)

    fs_out = output_fs(fs)
    resampled = fs_out != fs
    if resampled:
        leads_uv = resample_fs(leads_uv, fs, fs_out)
    parts = split_bounds(leads_uv.shape[1])

    others = [lead for lead in LEADS_12 if lead not in measured]
    derivations: list[str | None] = [_derivation(lead, input_lead, (sigma_uv or {}).get(lead)) for lead in others]
    input_derivation = f"Resampled from {fs:g} Hz (linear interpolation)" if resampled else None
    notice = notice_text(input_lead, model_version, source, attributes, source_complete)

    common = common_attributes(source, content_hash, model_version, notice, now, attributes)
    set_series(common, "ECG", derived_uid("series", anchor, model_version, input_lead), SERIES_NUMBER,
               complete_source_description(input_lead) if source_complete else SERIES_DESCRIPTION)
    common.AcquisitionContextSequence = Sequence()
    reference = source_reference(source)
    if reference is not None:
        common.ReferencedInstanceSequence = Sequence([reference])

    acquired = acquisition_start(source, now, attributes)
    for number, (start, stop) in enumerate(parts, start=1):
        ds = Dataset()
        ds.update(common)
        part_text = f" Part {number} of {len(parts)}, from {start / fs_out:g} s." if len(parts) > 1 else ""
        ds.SOPClassUID = TWELVE_LEAD_ECG_STORAGE
        ds.SOPInstanceUID = derived_uid("instance", anchor, model_version, input_lead, f"{number}/{len(parts)}")
        ds.InstanceNumber = number
        ds.AcquisitionDateTime = format_dt(acquired + timedelta(seconds=start / fs_out))
        segment = np.asarray(leads_uv[:, start:stop], dtype=np.float64)
        ds.WaveformSequence = Sequence([
            _multiplex_group(measured, segment[[LEADS_12.index(lead) for lead in measured]], fs_out,
                             "DERIVED" if resampled else "ORIGINAL", "INPUT LEAD" if len(measured) == 1 else "INPUT LEADS",
                             [input_derivation] * len(measured)),
            _multiplex_group(others, segment[[LEADS_12.index(lead) for lead in others]], fs_out,
                             "DERIVED", AI_GROUP_LABEL, derivations),
        ])
        ds.WaveformAnnotationSequence = Sequence([
            _annotation(1, f"Lead{'s' if len(measured) > 1 else ''} {measured_text} as acquired"
                           f" (the model's input).{part_text}"),
            _annotation(2, notice + part_text),
        ] + ([_annotation(1, quality_text[:1024])] if quality_text else [])
          + ([_annotation(2, uncertainty_text[:1024])] if uncertainty_text else []))
        yield add_file_meta(ds)


def write_ecg_dicom(out_dir: str | Path, stem: str, leads_uv: np.ndarray, fs: float,
                    model_version: str, input_lead: str, source: Dataset | None,
                    content_hash: str | None, attributes: Mapping[str, str] | None = None,
                    quality_text: str | None = None, sigma_uv: dict[str, float] | None = None,
                    source_complete: bool = False, uncertainty_text: str | None = None) -> list[Path]:
    """Build (see :func:`build_ecg_datasets`) and write the object(s) atomically.

    leads_uv: (12, N) µV. Writes ``<out_dir>/<stem>.dcm``, or ``<stem>_001.dcm``,
    ``<stem>_002.dcm``, ... when the record is split; each via a temporary file, fsync and
    rename. Returns the paths written, in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = dicom_file_names(stem, np.shape(leads_uv)[-1], fs)
    datasets = iter_ecg_datasets(leads_uv, fs, model_version, input_lead, source, content_hash,
                                 attributes=attributes, quality_text=quality_text, sigma_uv=sigma_uv,
                                 source_complete=source_complete, uncertainty_text=uncertainty_text)
    paths = []
    for name, ds in zip(names, datasets, strict=True):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        paths.append(write_bytes_atomic(out_dir / name, buffer.getvalue()))
    return paths
