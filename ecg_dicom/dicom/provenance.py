"""What every DICOM object we write says about where it comes from.

Shared by the 12-lead waveform writer (:mod:`.writer`) and the report's Encapsulated PDF
writer (:mod:`.pdf`), so both objects of one reconstruction land in the same patient and
study, name the same equipment and model, reference the same source and get their UIDs the
same deterministic way.

- Patient and study: only the attributes listed below are copied from the source, each
  checked against its VR (never the source wholesale: real carts write invalid objects).
- Study Instance UID: the source's; an invalid one is replaced by a UID derived from it
  (every result of that study lands together) and logged; a ``.npy`` input (no source) takes
  its sidecar's patient and study keywords (``attributes``, validated in
  :mod:`ecg_dicom.sidecar`), else a study derived from the input; without a PatientID it is
  marked as an unknown patient (see :func:`mark_unknown_patient`).
- A source's invalid UIDs (which cannot be copied or referenced as UIDs) are kept as
  received in the *Original Attributes Sequence* (:func:`original_invalid_uids`).
- Equipment: we are the manufacturer; *Contributing Equipment Sequence* names the model
  and its version as Processing Equipment and, when the source names it, the cart as
  Acquisition Equipment (so a page drawn from our object alone can say which device).
- UIDs: ``generate_uid(entropy_srcs=[kind, anchor, model version, input lead, ...])`` where
  the anchor is the source SOP Instance UID together with the content hash (without a
  source: the content hash): a replay of the same input gives the same UIDs and never a
  duplicate at PACS, and a cart that reuses a SOP Instance UID for another recording gets
  other output UIDs (the PACS would otherwise keep one of the two results).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DT, validate_value

from ecg_dicom import __version__
from ecg_dicom.dicom.codes import MODEL_NAME
from ecg_dicom.logsafe import uid_hash

logger = logging.getLogger("ecg_dicom.dicom.writer")

MANUFACTURER = "ecg-dicom"
NOT_FOR_DIAGNOSIS = "AI-reconstructed 12-lead ECG - NOT FOR DIAGNOSIS"

# Patient, Patient Study and General Study attributes copied from the source; the type-2
# ones are written empty when the source lacks them (or holds an invalid value).
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
COPIED_TYPE3 = ("IssuerOfPatientID", "PatientAge", "PatientSize", "PatientWeight", "StudyDescription")
# the recording device: copied from a DICOM source's General Equipment or a sidecar's keywords
ACQUISITION_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "InstitutionName")
UNKNOWN_PATIENT_NAME = "UNKNOWN"
UNKNOWN_PATIENT_ISSUER = "ecg-dicom (no patient identity given)"
UNKNOWN_PATIENT_TEXT = ("Patient unknown: the input came without patient identification (no PatientID in its"
                        " sidecar); the Patient ID is a placeholder for this recording alone.")


def code_item(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    """One code sequence item (CodeValue, CodingSchemeDesignator[, Version], CodeMeaning)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version is not None:
        item.CodingSchemeVersion = version
    item.CodeMeaning = meaning
    return item


def valid_uid(value: object) -> bool:
    return isinstance(value, str) and bool(value) and UID(value).is_valid


def uid_anchor(source: Dataset | None, content_hash: str | None) -> str:
    """What the output UIDs are derived from: the source SOP Instance UID and the content
    hash (either alone when the other is missing)."""
    source_uid = source.get("SOPInstanceUID") if source is not None else None
    anchor = "\n".join(str(part) for part in (source_uid, content_hash) if part)
    if not anchor:
        raise ValueError("need the source's SOP Instance UID or the input's content hash for the UIDs")
    return anchor


def derived_uid(kind: str, anchor: str, model_version: str, input_lead: str, *extra: str) -> str:
    """A deterministic UID for one output (``kind``: "series", "instance", "report-series", ...)."""
    return generate_uid(entropy_srcs=[kind, anchor, model_version, input_lead, *extra])


def copy_patient_study(out: Dataset, source: Dataset | None) -> None:
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


def apply_attributes(out: Dataset, attributes: Mapping[str, str]) -> None:
    """Set the Patient/Study attributes a sidecar gave (validated by ecg_dicom.sidecar)."""
    for keyword in (*COPIED_TYPE2, *COPIED_TYPE3):
        if attributes.get(keyword):
            setattr(out, keyword, attributes[keyword])


def mark_unknown_patient(out: Dataset, anchor: str) -> None:
    """Patient attributes that say the patient is unknown, in words PACS shows: Patient's Name
    ``UNKNOWN``, a Patient ID ``UNKNOWN-<16 hex digits of the input>`` made up for this
    recording alone (so PACS never files unrelated recordings under one blank patient), an
    issuer and a comment saying so."""
    out.PatientName = UNKNOWN_PATIENT_NAME
    out.PatientID = f"UNKNOWN-{hashlib.sha256(anchor.encode()).hexdigest()[:16]}"
    out.IssuerOfPatientID = UNKNOWN_PATIENT_ISSUER
    out.PatientComments = UNKNOWN_PATIENT_TEXT


def acquisition_equipment(source: Dataset | None, attributes: Mapping[str, str], when: str) -> Dataset | None:
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
    item.PurposeOfReferenceCodeSequence = Sequence([code_item("109101", "DCM", "Acquisition Equipment")])
    return item


def study_uid(source: Dataset | None, content_hash: str | None, attributes: Mapping[str, str]) -> str:
    """The source's (or sidecar's) Study Instance UID, or a deterministic replacement (logged)."""
    if source is None:
        return attributes.get("StudyInstanceUID") or generate_uid(entropy_srcs=["study", str(content_hash)])
    original = source.get("StudyInstanceUID")
    if valid_uid(original):
        return str(original)
    replacement = generate_uid(entropy_srcs=["study", str(original)])
    logger.warning("source Study Instance UID %s is not a valid UID: the result goes into the"
                   " replacement study %s", uid_hash(original), uid_hash(replacement))
    return replacement


def acquisition_start(source: Dataset | None, now: datetime, attributes: Mapping[str, str] | None = None) -> datetime:
    """When the source was acquired (Acquisition DateTime, else Date+Time; a sidecar's
    Acquisition DateTime for a .npy), else ``now``."""
    if attributes and attributes.get("AcquisitionDateTime"):
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


def format_dt(value: datetime) -> str:
    text = value.strftime("%Y%m%d%H%M%S.%f")
    return text + value.strftime("%z") if value.tzinfo is not None else text


def source_reference(source: Dataset | None) -> Dataset | None:
    """A reference item (class, instance, purpose "source") to the source, if its UIDs are valid."""
    if source is None:
        return None
    source_uid = source.get("SOPInstanceUID")
    if not (valid_uid(source_uid) and valid_uid(source.get("SOPClassUID"))):
        return None
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source_uid
    reference.PurposeOfReferenceCodeSequence = Sequence(
        [code_item("121322", "DCM", "Source image for image processing operation")])
    return reference


def patient_unknown(source: Dataset | None, attributes: Mapping[str, str] | None) -> bool:
    """A .npy input whose sidecar gave no PatientID."""
    return source is None and not (attributes or {}).get("PatientID")


def notice_text(input_lead: str, model_version: str, source: Dataset | None,
                attributes: Mapping[str, str] | None = None, source_complete: bool = False) -> str:
    """The "not for diagnosis" sentence every object carries (annotation, contribution).
    ``source_complete``: the source holds all 12 leads, measured (then said so)."""
    measured = f"lead {input_lead}" if input_lead in ("I", "II") else f"leads {input_lead.replace('+', ' and ')}"
    if source_complete:
        notice = (f"AI-reconstructed 12-lead ECG from {measured}: the source holds all 12 measured leads"
                  f" (read them there); the other leads here were reconstructed by {MODEL_NAME}"
                  f" {model_version}. NOT FOR DIAGNOSIS.")
    elif input_lead in ("I", "II"):
        notice = (f"AI-reconstructed 12-lead ECG: only lead {input_lead} was acquired; the other 11"
                  f" leads were reconstructed by {MODEL_NAME} {model_version}. NOT FOR DIAGNOSIS.")
    else:  # the two-lead model: I and II measured, the limb leads exact, V1-V6 learned
        notice = (f"AI-reconstructed 12-lead ECG: only {measured} were acquired; III, aVR, aVL, aVF computed"
                  f" from them, V1-V6 reconstructed by {MODEL_NAME} {model_version}. NOT FOR DIAGNOSIS.")
    if patient_unknown(source, attributes):
        notice += " Patient unknown (no patient identification came with the input)."
    source_uid = source.get("SOPInstanceUID") if source is not None else None
    if source is not None and not valid_uid(source_uid):
        logger.warning("source SOP Instance UID %s is not a valid UID: not referenced", uid_hash(source_uid))
        notice += f" Source instance UID (invalid, not referenced): {str(source_uid)[:64]}."
    return notice


def common_attributes(source: Dataset | None, content_hash: str | None, model_version: str,
                      notice: str, now: datetime, attributes: Mapping[str, str] | None = None) -> Dataset:
    """Patient, study, our equipment, creation time and contributing equipment, for any output.

    ``source``: the source DICOM object (None for a .npy input); ``content_hash``: the
    input's anchor hash (the study's anchor without a source); ``notice``: see
    :func:`notice_text`; ``attributes``: a .npy's sidecar keywords (ignored with a source).
    """
    attributes = {} if source is not None or attributes is None else dict(attributes)
    common = Dataset()
    common.SpecificCharacterSet = "ISO_IR 192"
    copy_patient_study(common, source)
    apply_attributes(common, attributes)
    if patient_unknown(source, attributes):
        mark_unknown_patient(common, uid_anchor(source, content_hash))
    common.StudyInstanceUID = study_uid(source, content_hash, attributes)
    if source is None and not attributes.get("StudyID"):
        # Deterministic like the study's UID; its date and time stay empty unless the sidecar gave them.
        common.StudyID = str(content_hash)[:16]
    common.Manufacturer = MANUFACTURER
    common.ManufacturerModelName = MODEL_NAME
    common.SoftwareVersions = [__version__, model_version.replace("\\", "/")[:64]]
    common.ContentDate = now.strftime("%Y%m%d")
    common.ContentTime = now.strftime("%H%M%S.%f")
    common.InstanceCreationDate = common.ContentDate
    common.InstanceCreationTime = common.ContentTime
    equipment = Dataset()
    equipment.Manufacturer = MANUFACTURER
    equipment.ManufacturerModelName = MODEL_NAME
    equipment.SoftwareVersions = common.SoftwareVersions
    equipment.ContributionDateTime = format_dt(now)
    equipment.ContributionDescription = notice
    equipment.PurposeOfReferenceCodeSequence = Sequence([code_item("109102", "DCM", "Processing Equipment")])
    acquisition = acquisition_equipment(source, attributes, format_dt(now))
    common.ContributingEquipmentSequence = Sequence([equipment] if acquisition is None else [equipment, acquisition])
    original = original_invalid_uids(source, format_dt(now))
    if original:
        common.OriginalAttributesSequence = Sequence(original)
    return common


def _nonconforming(tag: str, value: str, sequence: str | None) -> Dataset:
    """A Nonconforming Modified Attributes item: ``tag`` (inside ``sequence``'s first item)
    held ``value``, which does not conform to its VR (kept byte for byte, as OB)."""
    item = Dataset()
    if sequence is not None:
        item.SelectorSequencePointer = Tag(sequence)
        item.SelectorSequencePointerItems = 1
    item.SelectorAttribute = Tag(tag)
    item.SelectorValueNumber = 1
    data = value.encode("ascii", "replace")
    item.NonconformingDataElementValue = data + b"\0" * (len(data) % 2)
    return item


def original_invalid_uids(source: Dataset | None, when: str) -> list[Dataset]:
    """Original Attributes Sequence items (PS3.3 C.12.1) that keep the source's invalid UIDs.

    A UID that is not valid cannot be written as a UID without making our object invalid
    (dciodvfy: "Empty component"), so the result goes into a replacement study and carries
    no Referenced Instance Sequence item. The link to the source is kept the way DICOM
    provides for values that do not conform to their VR: one item per replaced value, its
    *Nonconforming Modified Attributes Sequence* holding the source's value as received
    (the Study Instance UID we would have copied; the Referenced SOP Instance UID we would
    have referenced), reason CORRECT. A PACS or a script can read them and relate the
    result to its source; dciodvfy validates them.
    """
    if source is None:
        return []
    replaced = []
    study = source.get("StudyInstanceUID")
    if study and not valid_uid(study):
        replaced.append(_nonconforming("StudyInstanceUID", str(study), None))
    instance = source.get("SOPInstanceUID")
    if instance and not valid_uid(instance):
        replaced.append(_nonconforming("ReferencedSOPInstanceUID", str(instance), "ReferencedInstanceSequence"))
    items = []
    for nonconforming in replaced:
        item = Dataset()
        item.ModifiedAttributesSequence = Sequence([Dataset()])
        item.NonconformingModifiedAttributesSequence = Sequence([nonconforming])
        item.AttributeModificationDateTime = when
        item.ModifyingSystem = MANUFACTURER
        item.SourceOfPreviousValues = ""
        item.ReasonForTheAttributeModification = "CORRECT"
        items.append(item)
    return items


def complete_source_description(input_lead: str, report: bool = False) -> str:
    """The Series Description (LO, at most 64 characters) of a result whose source holds all
    12 measured leads: says so, and from which lead the AI leads come."""
    kind = "page" if report else "ECG"
    leads = f"lead {input_lead}" if "+" not in input_lead else f"leads {input_lead}"
    text = f"AI {kind} from {leads}; source has all 12 leads; NOT FOR DIAGNOSIS"
    return text if len(text) <= 64 else f"AI {kind} from {input_lead}; source has all 12 leads; NOT FOR DIAGNOSIS"


def set_series(ds: Dataset, modality: str, series_uid: str, number: int, description: str) -> None:
    """The General Series attributes of one of our series."""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description


def add_file_meta(ds: Dataset) -> Dataset:
    """File Meta Information (Explicit VR Little Endian) matching ``ds``'s SOP class and instance."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def header_fields(ds: Dataset | None) -> dict[str, str]:
    """What a report header shows, read from a source object or from one of our results.

    Keys (DICOM keywords, values as text, absent when unknown): PatientName, PatientID,
    PatientBirthDate, PatientSex, AcquisitionDateTime, Manufacturer, ManufacturerModelName,
    InstitutionName. For one of our results the device is its Acquisition Equipment item.
    """
    if ds is None:
        return {}
    out: dict[str, str] = {}
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "InstitutionName"):
        value = ds.get(keyword)
        if value not in (None, ""):
            out[keyword] = str(value)
    ours = str(ds.get("Manufacturer", "")) == MANUFACTURER
    if ours:
        for item in ds.get("ContributingEquipmentSequence", []):
            codes = [c.get("CodeValue") for c in item.get("PurposeOfReferenceCodeSequence", [])]
            if "109101" in codes:
                for keyword in ACQUISITION_EQUIPMENT:
                    if item.get(keyword):
                        out[keyword] = str(item.get(keyword))
    else:
        for keyword in ("Manufacturer", "ManufacturerModelName"):
            if ds.get(keyword):
                out[keyword] = str(ds.get(keyword))
    # Our object from a .npy input without a source has no known acquisition time (its
    # Acquisition DateTime is the conversion's): only a referenced source or a study date tells.
    known = not ours or "ReferencedInstanceSequence" in ds or bool(ds.get("StudyDate")) \
        or not str(ds.get("PatientID", "")).startswith("UNKNOWN-")
    moment = acquisition_start(ds, datetime.min) if known else datetime.min
    when = format_dt(moment) if moment != datetime.min else None
    if when:
        out["AcquisitionDateTime"] = str(when)
    return out
