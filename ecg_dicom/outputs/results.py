"""The result files of one reconstruction, shared by ``convert`` and the service's worker, so
both doors write the same files the same way:

- ``<stem>.npy``: (12, N) float32 µV (format npy/both);
- ``<stem>.dcm`` (or ``<stem>_001.dcm``, ...): the 12-lead waveform object (format dicom/both);
- ``<stem>.json``: what the arrays do not say: rate, measured lead, model, per-lead
  uncertainty, the signal-quality verdict with its measured values, and what the source said
  about patient and acquisition (the header of the page; ``ecg-dicom plot`` reads it);
- on request ``<stem>.confidence.json``;
- with a report: ``<stem>.pdf``, the 12-lead page, and (format dicom/both)
  ``<stem>.report.dcm``, the same page as an Encapsulated PDF object for PACS.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ecg_dicom.core.inference import Reconstruction, Reconstructor
from ecg_dicom.core.uncertainty import RecordUncertainty
from ecg_dicom.dicom.codes import MODEL_NAME
from ecg_dicom.files import write_bytes_atomic, write_npy_atomic
from ecg_dicom.inputs import LeadInput
from ecg_dicom.leads import LEADS_12, input_leads_of, lead_uncertainties, learned_leads

OUTPUT_FORMATS = ("npy", "dicom", "both")
PAPER_SIZES = ("A4", "Letter")
REPORT_SUFFIX = ".report.dcm"
HEADER_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AcquisitionDateTime",
               "Manufacturer", "ManufacturerModelName", "InstitutionName")


def confidence_report(recon: Reconstruction, input_lead: str, uncertainty: RecordUncertainty | None = None) -> dict:
    """Per learned lead: the model's RMS uncertainty (µV), the same relative to the lead's std
    and, with ``uncertainty``, the calibrated ``uncertainty`` (expected 1 − r); at the top,
    ``record_uncertainty`` (expected 1 − mean r over the learned leads; larger = less
    reliable), the model's threshold for it and the leads named unreliable, in words.

    A lower ``relative_uncertainty`` means a more reliable lead. σ is what the variance
    head predicts (for an ensemble: the members' variance plus their spread), validated
    against actual errors in the model card.
    """
    names = learned_leads(input_lead)
    if recon.sigma is None:
        return {"available": False, "reason": "checkpoint has no variance head"}
    leads = {}
    for name, sigma in zip(names, recon.sigma):
        std = float(np.std(recon.leads[LEADS_12.index(name)]))
        leads[name] = {"sigma_uv": round(float(sigma), 2),
                       "relative_uncertainty": round(float(sigma) / std, 4) if std > 0 else None}
        if uncertainty is not None:
            leads[name]["uncertainty"] = round(uncertainty.leads[name], 4)
    if uncertainty is None:
        return {"available": True, "leads": leads}
    record = uncertainty.to_json()
    return {"available": True, "record_uncertainty": record["record_uncertainty"],
            "record_uncertainty_threshold": record["threshold"], "above_threshold": record["above_threshold"],
            "unreliable_leads": record["unreliable_leads"], "summary": record["text"], "leads": leads}


def result_file_names(stem: str, n_samples: int, fs: float, output_format: str, confidence: bool,
                      report: bool = False) -> list[str]:
    """The files :func:`write_outputs` writes for a (12, ``n_samples``) result at ``fs`` Hz, in order."""
    names = []
    if output_format in ("npy", "both"):
        names.append(f"{stem}.npy")
    if output_format in ("dicom", "both"):
        from ecg_dicom.dicom.writer import dicom_file_names  # pydicom (~0.3 s) only when DICOM is written

        names += dicom_file_names(stem, n_samples, fs)
    names.append(f"{stem}.json")
    if confidence:
        names.append(f"{stem}.confidence.json")
    if report:
        names.append(f"{stem}.pdf")
        if output_format in ("dicom", "both"):
            names.append(f"{stem}{REPORT_SUFFIX}")
    return names


def uid_anchor_hash(item: LeadInput) -> str:
    """What a .npy result's UIDs derive from: the content hash, with the sidecar's content when
    there is one (the same samples under another patient or rate get other UIDs)."""
    if item.sidecar is None:
        return item.content_hash
    return hashlib.sha256(f"{item.content_hash}\n{item.sidecar.canonical()}".encode()).hexdigest()


def result_metadata(item: LeadInput, recon: Reconstruction, reconstructor: Reconstructor) -> dict:
    """The ``<stem>.json`` of a result (the input sidecar's keys where they mean the same)."""
    attributes = dict(item.sidecar.attributes) if item.sidecar is not None else {}
    if item.dataset is not None:
        from ecg_dicom.dicom.provenance import header_fields  # pydicom: only for DICOM inputs

        header = header_fields(item.dataset)
    else:
        header = {k: str(v) for k, v in attributes.items() if k in HEADER_KEYS and v}
    sigma = lead_uncertainties(recon.sigma, reconstructor.input_lead) if recon.sigma is not None else None
    uncertainty = reconstructor.uncertainty(recon)
    return {
        "fs": float(item.fs),
        "lead": reconstructor.input_lead,
        "input_leads": list(input_leads_of(reconstructor.input_lead)),  # the lead(s) the model was given
        "units": "uV",
        "leads": list(LEADS_12),
        "model": MODEL_NAME,
        "model_version": reconstructor.model_version,
        "sigma_uv": None if sigma is None else {k: round(v, 2) for k, v in sigma.items()},
        "uncertainty": None if uncertainty is None else uncertainty.to_json(),
        "quality": item.quality.to_json() if item.quality is not None else None,
        **header,
    }


def write_outputs(output_dir: Path, stem: str, item: LeadInput, recon: Reconstruction,
                  reconstructor: Reconstructor, output_format: str, confidence: bool,
                  report: str | None = None) -> list[Path]:
    """Write the requested outputs for one converted input; returns the files written, in the
    order of :func:`result_file_names`.

    ``report``: the paper size of the 12-lead page ("A4" or "Letter"), or None for no page.
    """
    written: list[Path] = []
    meta = result_metadata(item, recon, reconstructor)
    quality_text = item.quality.summary() if item.quality is not None else None
    anchor = uid_anchor_hash(item)
    attributes = item.sidecar.attributes if item.sidecar is not None else None
    if output_format in ("npy", "both"):
        written.append(write_npy_atomic(output_dir / f"{stem}.npy", recon.leads))
    waveforms: list[Path] = []
    if output_format in ("dicom", "both"):
        from ecg_dicom.dicom.writer import write_ecg_dicom  # pydicom (~0.3 s) only when DICOM is written

        waveforms = write_ecg_dicom(output_dir, stem, recon.leads, item.fs, reconstructor.model_version,
                                    reconstructor.input_lead, item.dataset, anchor, attributes,
                                    quality_text=quality_text, sigma_uv=meta["sigma_uv"],
                                    uncertainty_text=(meta["uncertainty"] or {}).get("text"))
        written += waveforms
    written.append(write_bytes_atomic(output_dir / f"{stem}.json", json.dumps(meta, indent=2).encode()))
    if confidence:
        text = json.dumps(confidence_report(recon, reconstructor.input_lead, reconstructor.uncertainty(recon)),
                          indent=2)
        written.append(write_bytes_atomic(output_dir / f"{stem}.confidence.json", text.encode()))
    if report:
        from ecg_dicom.report import render, report_data_from_metadata

        pdf = render(report_data_from_metadata(recon.leads, meta), "pdf", report)
        written.append(write_bytes_atomic(output_dir / f"{stem}.pdf", pdf))
        if waveforms:
            from pydicom import dcmread

            from ecg_dicom.dicom.pdf import write_pdf_dicom

            refs = [dcmread(p, specific_tags=["SOPClassUID", "SOPInstanceUID"]) for p in waveforms]
            written.append(write_pdf_dicom(output_dir / f"{stem}{REPORT_SUFFIX}", pdf, reconstructor.model_version,
                                           reconstructor.input_lead, item.dataset, anchor, refs, attributes))
    return written
