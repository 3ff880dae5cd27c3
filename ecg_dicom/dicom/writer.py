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

Provenance: the Patient and Study attributes listed below are copied from the source (only
those, each checked against its VR); the result joins the source's study under a new
series described as AI-reconstructed and not for diagnosis; *Referenced Instance Sequence*
points at the source instance, *Contributing Equipment Sequence* names the model and its
version, and a *Waveform Annotation* says the same in words. A source whose Study Instance
UID is not a valid UID (e.g. the ECG Toolkit example's ``…091000.``) cannot be copied
without making our object invalid: the result goes into a replacement study whose UID is
derived from the invalid one (so every result from that source study lands together), and
a warning is logged; an invalid source SOP Instance UID is likewise left unreferenced.
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

import hashlib
import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DT, DSfloat, validate_value

from ecg_dicom import __version__
from ecg_dicom.core.preprocess import resample_fs
from ecg_dicom.dicom.codes import SCPECG_CODES, TWELVE_LEAD_ECG_STORAGE
from ecg_dicom.files import safe_stem, write_bytes_atomic
from ecg_dicom.leads import DERIVED_LIMB_LEADS, LEADS_12, SUPPORTED_INPUT_LEADS
from ecg_dicom.logsafe import uid_hash

logger = logging.getLogger(__name__)

MIN_FS_HZ = 200.0
MAX_FS_HZ = 1000.0
MAX_SAMPLES = 16384
INT16_MAX = 32767
SERIES_NUMBER = 9001
SERIES_DESCRIPTION = "AI-reconstructed 12-lead ECG - NOT FOR DIAGNOSIS"
MANUFACTURER = "ecg-dicom"
MODEL_NAME = "ecg-dicom BiLSTM+Attention 12-lead reconstruction"

# Patient, Patient Study and General Study attributes copied from the source; the type-2
# ones are written empty when the source lacks them (or holds an invalid value).
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
COPIED_TYPE3 = ("IssuerOfPatientID", "PatientAge", "PatientSize", "PatientWeight", "StudyDescription")

_SENSITIVITY_STEPS = (1.0, 2.0, 2.5, 5.0)
# the recording device: copied from a DICOM source's General Equipment or a sidecar's keywords
ACQUISITION_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "InstitutionName")
UNKNOWN_PATIENT_NAME = "UNKNOWN"
UNKNOWN_PATIENT_ISSUER = "ecg-dicom (no patient identity given)"
UNKNOWN_PATIENT_TEXT = ("Patient unknown: the input came without patient identification (no PatientID in its"
                        " sidecar); the Patient ID is a placeholder for this recording alone.")


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version is not None:
        item.CodingSchemeVersion = version
    item.CodeMeaning = meaning
    return item


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


def _valid_uid(value: object) -> bool:
    return isinstance(value, str) and bool(value) and UID(value).is_valid


def _copy_patient_study(out: Dataset, source: Dataset | None) -> None:
    """Copy the listed Patient/Study attributes whose values are valid for their VR."""
    for keyword in (*COPIED_TYPE2, *COPIED_TYPE3):
        elem = source[keyword] if source is not None and keyword in source else None
        # str(): names (PN) are re-encoded in our character set; DS/IS keep their text.
        value = str(elem.value) if elem is not None and elem.value is not None else None
        if elem is not None and value:
            try:
                validate_value(elem.VR, value, pydicom.config.RAISE)
            except ValueError:
                # Name the attribute only: its value may identify the patient.
                logger.warning("source %s is not a valid %s value: left out", keyword, elem.VR)
                value = None
        if value not in (None, ""):
            setattr(out, keyword, value)
        elif keyword in COPIED_TYPE2:
            setattr(out, keyword, "")


def _apply_attributes(out: Dataset, attributes: Mapping[str, str]) -> None:
    """Set the Patient/Study attributes a sidecar gave (validated by ecg_dicom.sidecar)."""
    for keyword in (*COPIED_TYPE2, *COPIED_TYPE3):
        if attributes.get(keyword):
            setattr(out, keyword, attributes[keyword])


def _mark_unknown_patient(out: Dataset, anchor: str) -> None:
    """Patient attributes that say the patient is unknown (see the module docstring)."""
    out.PatientName = UNKNOWN_PATIENT_NAME
    out.PatientID = f"UNKNOWN-{hashlib.sha256(anchor.encode()).hexdigest()[:16]}"
    out.IssuerOfPatientID = UNKNOWN_PATIENT_ISSUER
    out.PatientComments = UNKNOWN_PATIENT_TEXT


def _acquisition_equipment(source: Dataset | None, attributes: Mapping[str, str], when: str) -> Dataset | None:
    """A Contributing Equipment item naming the recording device, or None when nothing is known."""
    known = {}
    for keyword in ACQUISITION_EQUIPMENT:
        value = attributes.get(keyword) or (str(source.get(keyword, "") or "").strip() if source is not None else "")
        if value:
            try:
                validate_value(dictionary_VR(keyword), value, pydicom.config.RAISE)
            except ValueError:
                logger.warning("source %s is not a valid %s value: left out", keyword, dictionary_VR(keyword))
                continue
            known[keyword] = value
    if not known:
        return None
    item = Dataset()
    item.Manufacturer = known.get("Manufacturer", "unknown")   # type 1 in this sequence
    for keyword in ACQUISITION_EQUIPMENT[1:]:
        if keyword in known:
            setattr(item, keyword, known[keyword])
    item.ContributionDateTime = when
    item.ContributionDescription = "Acquired the input lead"
    item.PurposeOfReferenceCodeSequence = Sequence([_code("109101", "DCM", "Acquisition Equipment")])
    return item


def _study_uid(source: Dataset | None, content_hash: str | None, attributes: Mapping[str, str]) -> str:
    """The source's (or sidecar's) Study Instance UID, or a deterministic replacement (logged)."""
    if source is None:
        return attributes.get("StudyInstanceUID") or generate_uid(entropy_srcs=["study", str(content_hash)])
    original = source.get("StudyInstanceUID")
    if _valid_uid(original):
        return str(original)
    replacement = generate_uid(entropy_srcs=["study", str(original)])
    logger.warning("source Study Instance UID %s is not a valid UID: the result goes into the"
                   " replacement study %s", uid_hash(original), uid_hash(replacement))
    return replacement


def _acquisition_start(source: Dataset | None, now: datetime, attributes: Mapping[str, str]) -> datetime:
    """When the source was acquired (Acquisition DateTime, else Date+Time; a sidecar's
    Acquisition DateTime for a .npy), else ``now``."""
    if attributes.get("AcquisitionDateTime"):
        return DT(attributes["AcquisitionDateTime"])
    if source is not None:
        candidates = [source.get("AcquisitionDateTime"),
                      f"{source.get('AcquisitionDate', '')}{source.get('AcquisitionTime', '')}",
                      f"{source.get('ContentDate', '')}{source.get('ContentTime', '')}"]
        for text in candidates:
            if not text:
                continue
            try:
                return DT(str(text).strip())
            except ValueError:
                continue
    return now


def _format_dt(value: datetime) -> str:
    text = value.strftime("%Y%m%d%H%M%S.%f")
    return text + value.strftime("%z") if value.tzinfo is not None else text


def _channel(lead: str, sensitivity: float, derivation: str | None) -> Dataset:
    channel = Dataset()
    channel.ChannelLabel = lead
    channel.ChannelSourceSequence = Sequence([_code(SCPECG_CODES[lead], "SCPECG", f"Lead {lead}", "1.3")])
    channel.ChannelSensitivity = DSfloat(sensitivity, auto_format=True)
    channel.ChannelSensitivityUnitsSequence = Sequence([_code("uV", "UCUM", "microvolt", "1.4")])
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


def _annotation(group_number: int, text: str) -> Dataset:
    item = Dataset()
    item.UnformattedTextValue = text
    item.ReferencedWaveformChannels = [group_number, 0]  # 0: every channel of the group
    return item


def build_ecg_datasets(leads_uv: np.ndarray, fs: float, model_version: str, input_lead: str,
                       source: Dataset | None, content_hash: str | None,
                       now: datetime | None = None, attributes: Mapping[str, str] | None = None) -> list[Dataset]:
    """Build the 12-Lead ECG Waveform Storage object(s) for one reconstruction.

    Parameters
    ----------
    leads_uv : (12, N) array, µV, in LEADS_12 order (input lead included as given).
    fs : sampling frequency of ``leads_uv`` in Hz (resampled to 200–1000 Hz if outside).
    model_version : the reconstructing model's version (provenance and UIDs).
    input_lead : the lead that was acquired ("I" or "II"); the other 11 are derived.
    source : the source DICOM object, or None for a .npy input.
    content_hash : sha256 of the input file; the UID anchor when there is no source.
    now : the conversion time (ContentDate/Time), default the current local time.
    attributes : for a .npy input, the DICOM keywords its sidecar gave (patient, study,
        acquisition time, device), already validated; ignored with a DICOM source.

    Returns
    -------
    list of Dataset
        One object, or several split in time when the record exceeds 16 384 samples
        per channel at the written rate; each with File Meta Information.
    """
    leads_uv = np.asarray(leads_uv, dtype=np.float64)
    if leads_uv.ndim != 2 or leads_uv.shape[0] != len(LEADS_12) or leads_uv.shape[1] == 0:
        raise ValueError(f"leads_uv must be (12, N) with N > 0, got {leads_uv.shape}")
    if not np.all(np.isfinite(leads_uv)):
        raise ValueError("leads_uv holds NaN or infinite values")
    if input_lead not in SUPPORTED_INPUT_LEADS:
        raise ValueError(f"input lead {input_lead!r} is not one of {SUPPORTED_INPUT_LEADS}")
    if not (fs > 0 and math.isfinite(fs)):
        raise ValueError(f"sampling frequency must be a positive number, got {fs!r}")
    source_uid = source.get("SOPInstanceUID") if source is not None else None
    anchor = str(source_uid) if source_uid else content_hash
    if not anchor:
        raise ValueError("need the source's SOP Instance UID or the input's content hash for the UIDs")
    now = now or datetime.now()
    attributes = {} if source is not None or attributes is None else dict(attributes)
    unknown_patient = source is None and not attributes.get("PatientID")

    fs_out = output_fs(fs)
    resampled = fs_out != fs
    if resampled:
        leads_uv = resample_fs(leads_uv, fs, fs_out)
    parts = split_bounds(leads_uv.shape[1])

    others = [lead for lead in LEADS_12 if lead != input_lead]
    model_text = f"{MODEL_NAME} {model_version}"
    derivations: list[str | None] = [
        "Computed from leads I and II (Einthoven/Goldberger)" if lead in DERIVED_LIMB_LEADS
        else f"Predicted from lead {input_lead} by an AI model" for lead in others]
    input_derivation = f"Resampled from {fs:g} Hz (linear interpolation)" if resampled else None
    notice = (f"AI-reconstructed 12-lead ECG: only lead {input_lead} was acquired; the other 11"
              f" leads were reconstructed by {model_text}. NOT FOR DIAGNOSIS.")
    if unknown_patient:
        notice += " Patient unknown (no patient identification came with the input)."
    if source is not None and not _valid_uid(source_uid):
        logger.warning("source SOP Instance UID %s is not a valid UID: not referenced", uid_hash(source_uid))
        notice += f" Source instance UID (invalid, not referenced): {str(source_uid)[:64]}."

    common = Dataset()
    common.SpecificCharacterSet = "ISO_IR 192"
    _copy_patient_study(common, source)
    _apply_attributes(common, attributes)
    if unknown_patient:
        _mark_unknown_patient(common, str(anchor))
    common.StudyInstanceUID = _study_uid(source, content_hash, attributes)
    if source is None and not attributes.get("StudyID"):
        # Deterministic like the study's UID; its date and time stay empty unless the sidecar gave them.
        common.StudyID = str(content_hash)[:16]
    common.Modality = "ECG"
    common.SeriesInstanceUID = generate_uid(entropy_srcs=["series", anchor, model_version, input_lead])
    common.SeriesNumber = SERIES_NUMBER
    common.SeriesDescription = SERIES_DESCRIPTION
    common.Manufacturer = MANUFACTURER
    common.ManufacturerModelName = MODEL_NAME
    common.SoftwareVersions = [__version__, model_version.replace("\\", "/")[:64]]
    common.ContentDate = now.strftime("%Y%m%d")
    common.ContentTime = now.strftime("%H%M%S.%f")
    common.InstanceCreationDate = common.ContentDate
    common.InstanceCreationTime = common.ContentTime
    common.AcquisitionContextSequence = Sequence()
    if source is not None and _valid_uid(source_uid) and _valid_uid(source.get("SOPClassUID")):
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source_uid
        reference.PurposeOfReferenceCodeSequence = Sequence(
            [_code("121322", "DCM", "Source image for image processing operation")])
        common.ReferencedInstanceSequence = Sequence([reference])
    equipment = Dataset()
    equipment.Manufacturer = MANUFACTURER
    equipment.ManufacturerModelName = MODEL_NAME
    equipment.SoftwareVersions = common.SoftwareVersions
    equipment.ContributionDateTime = _format_dt(now)
    equipment.ContributionDescription = notice
    equipment.PurposeOfReferenceCodeSequence = Sequence([_code("109102", "DCM", "Processing Equipment")])
    acquisition = _acquisition_equipment(source, attributes, _format_dt(now))
    common.ContributingEquipmentSequence = Sequence([equipment] if acquisition is None else [equipment, acquisition])

    acquired = _acquisition_start(source, now, attributes)
    datasets = []
    for number, (start, stop) in enumerate(parts, start=1):
        ds = Dataset()
        ds.update(common)
        part_text = f" Part {number} of {len(parts)}, from {start / fs_out:g} s." if len(parts) > 1 else ""
        ds.SOPClassUID = TWELVE_LEAD_ECG_STORAGE
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[
            "instance", anchor, model_version, input_lead, f"{number}/{len(parts)}"])
        ds.InstanceNumber = number
        ds.AcquisitionDateTime = _format_dt(acquired + timedelta(seconds=start / fs_out))
        segment = leads_uv[:, start:stop]
        ds.WaveformSequence = Sequence([
            _multiplex_group([input_lead], segment[[LEADS_12.index(input_lead)]], fs_out,
                             "DERIVED" if resampled else "ORIGINAL", "INPUT LEAD", [input_derivation]),
            _multiplex_group(others, segment[[LEADS_12.index(lead) for lead in others]], fs_out,
                             "DERIVED", "AI RECONSTRUCTED", derivations),
        ])
        ds.WaveformAnnotationSequence = Sequence([
            _annotation(1, f"Lead {input_lead} as acquired (the model's input).{part_text}"),
            _annotation(2, notice + part_text),
        ])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        datasets.append(ds)
    return datasets


def write_ecg_dicom(out_dir: str | Path, stem: str, leads_uv: np.ndarray, fs: float,
                    model_version: str, input_lead: str, source: Dataset | None,
                    content_hash: str | None, attributes: Mapping[str, str] | None = None) -> list[Path]:
    """Build (see :func:`build_ecg_datasets`) and write the object(s) atomically.

    leads_uv: (12, N) µV. Writes ``<out_dir>/<stem>.dcm``, or ``<stem>_001.dcm``,
    ``<stem>_002.dcm``, ... when the record is split; each via a temporary file, fsync and
    rename. Returns the paths written, in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = dicom_file_names(stem, np.shape(leads_uv)[-1], fs)
    datasets = build_ecg_datasets(leads_uv, fs, model_version, input_lead, source, content_hash,
                                  attributes=attributes)
    assert len(names) == len(datasets), "dicom_file_names and build_ecg_datasets disagree on the parts"
    paths = []
    for name, ds in zip(names, datasets):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        paths.append(write_bytes_atomic(out_dir / name, buffer.getvalue()))
    return paths
