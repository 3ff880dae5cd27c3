"""The 12-lead report page as a DICOM Encapsulated PDF Storage object (PS3.3 A.45.1).

Most PACS viewers (Orthanc Explorer, OHIF, ...) cannot draw a waveform object but all show
or hand out a PDF, so every result also goes to PACS as its printed-style page:

- the same patient and study as the waveform result, the same equipment, model version and
  "not for diagnosis" wording, from :mod:`.provenance`;
- its own series (number 9002, Modality ``ECG`` so that ECG hanging protocols and worklists
  find it beside the waveform) described as AI-reconstructed and not for diagnosis, with the
  same words as *Document Title*;
- *Source Instance Sequence*: the source ECG object (when there is one) and the waveform
  result object(s) the page was drawn from;
- deterministic UIDs (kind ``report-series`` / ``report`` + the waveform's anchor, model
  version and input lead): a replay sends the same instance again, never a second one;
- *Burned In Annotation* YES: the page prints the patient's name and ID.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ecg_dicom.dicom.codes import ENCAPSULATED_PDF_STORAGE
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
from ecg_dicom.files import write_bytes_atomic

REPORT_SERIES_NUMBER = 9002
REPORT_TITLE = NOT_FOR_DIAGNOSIS + " (report)"
# LOINC 11524-6 "EKG study": the kind of document
DOCUMENT_CODE = ("11524-6", "LN", "EKG study")


def _reference(sop_class: str, sop_instance: str, purpose: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    item.PurposeOfReferenceCodeSequence = Sequence([code_item(*purpose)])
    return item


def build_pdf_dataset(pdf: bytes, model_version: str, input_lead: str, source: Dataset | None,
                      content_hash: str | None, waveforms: list[Dataset] | None = None,
                      now: datetime | None = None, attributes: Mapping[str, str] | None = None,
                      source_complete: bool = False) -> Dataset:
    """The Encapsulated PDF object holding ``pdf`` (the report page's bytes).

    ``source``/``content_hash``/``attributes``: as for the waveform writer (patient, study,
    UID anchor, a .npy sidecar's keywords);
    ``waveforms``: the waveform result objects the page shows (referenced); ``now``: the
    conversion time (Content Date/Time); ``source_complete``: the source holds all 12 measured
    leads (the series description and the notice say so).
    """
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document (no %PDF- header)")
    anchor = uid_anchor(source, content_hash)
    now = now or datetime.now()
    attributes = {} if source is not None or attributes is None else dict(attributes)
    notice = notice_text(input_lead, model_version, source, attributes, source_complete)
    ds = common_attributes(source, content_hash, model_version, notice, now, attributes)
    set_series(ds, "ECG", derived_uid("report-series", anchor, model_version, input_lead),
               REPORT_SERIES_NUMBER,
               complete_source_description(input_lead, report=True) if source_complete else REPORT_TITLE)
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = derived_uid("report", anchor, model_version, input_lead)
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = format_dt(acquisition_start(source, now, attributes))
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = REPORT_TITLE
    ds.ConceptNameCodeSequence = Sequence([code_item(*DOCUMENT_CODE)])
    references = []
    source_item = source_reference(source)
    if source_item is not None:
        references.append(source_item)
    for waveform in waveforms or []:
        references.append(_reference(waveform.SOPClassUID, waveform.SOPInstanceUID,
                                     ("121324", "DCM", "Source Image")))
    if references:
        ds.SourceInstanceSequence = Sequence(references)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(pdf)  # the value is padded to an even length on write
    return add_file_meta(ds)


def write_pdf_dicom(path: str | Path, pdf: bytes, model_version: str, input_lead: str,
                    source: Dataset | None, content_hash: str | None,
                    waveforms: list[Dataset] | None = None, attributes: Mapping[str, str] | None = None,
                    source_complete: bool = False) -> Path:
    """Build (see :func:`build_pdf_dataset`) and write the object atomically to ``path``."""
    ds = build_pdf_dataset(pdf, model_version, input_lead, source, content_hash, waveforms, attributes=attributes,
                           source_complete=source_complete)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return write_bytes_atomic(path, buffer.getvalue())


def read_pdf_dicom(ds_or_path: Dataset | str | Path) -> bytes:
    """The PDF bytes of an Encapsulated PDF object, without the padding byte."""
    import pydicom

    ds = ds_or_path if isinstance(ds_or_path, Dataset) else pydicom.dcmread(ds_or_path)
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[:int(length)] if length else data.rstrip(b"\x00")
