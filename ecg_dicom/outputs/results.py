"""The result files of one reconstruction, shared by ``convert`` and the service's worker, so
both doors write the same files the same way:

- ``<stem>.npy``: (12, N) float32 µV (format npy/both);
- ``<stem>.dcm`` (or ``<stem>_001.dcm``, ...): the 12-lead waveform object (format dicom/both);
- ``<stem>.json``: what the arrays do not say: rate (and where it came from: ``fs_source``), the
  lead the model was given (``input_lead``), model, per-lead uncertainty, the signal-quality
  verdict with its measured values, what the source said about patient and acquisition (the
  header of the page; ``ecg-dicom plot`` reads it), and, when the source also measured the
  leads we reconstruct, ``accuracy`` (per lead r and RMSE µV, the ``evaluate`` protocol) and
  ``source_complete``;
- on request ``<stem>.confidence.json``;
- with a report: ``<stem>.pdf``, the 12-lead page, and (format dicom/both)
  ``<stem>.report.dcm``, the same page as an Encapsulated PDF object for PACS.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ecg_dicom.core.accuracy import source_accuracy, source_complete
from ecg_dicom.core.inference import Reconstruction, Reconstructor
from ecg_dicom.core.uncertainty import RecordUncertainty
from ecg_dicom.dicom.codes import MODEL_NAME
from ecg_dicom.files import write_bytes_atomic, write_npy_atomic
from ecg_dicom.inputs import LeadInput
from ecg_dicom.leads import LEADS_12, input_leads_of, lead_uncertainties, learned_leads
from ecg_dicom.report import render, report_data_from_metadata
from ecg_dicom.report.background import PageRenderer, PendingPage

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
    """The content hash a result's UIDs derive from (with the source SOP Instance UID, if any).

    ``.npy``: the file's hash, with the sidecar's content when there is one (the same samples
    under another patient or rate get other UIDs). DICOM: the hash of the decoded input lead
    and its rate, the same whichever door or transfer syntax brought the object, so a replay
    keeps its UIDs and another recording under a reused SOP Instance UID gets its own."""
    if item.dataset is not None:
        digest = hashlib.sha256(np.ascontiguousarray(item.signal_uv, dtype="<f8").tobytes())
        digest.update(f"\n{float(item.fs)!r}".encode())
        return digest.hexdigest()
    if item.sidecar is None:
        return item.content_hash
    return hashlib.sha256(f"{item.content_hash}\n{item.sidecar.canonical()}".encode()).hexdigest()


def result_accuracy(item: LeadInput, recon: Reconstruction, reconstructor: Reconstructor) -> dict[str, dict]:
    """Per learned lead the source also measured: r and RMSE µV of the reconstruction against
    it ({} for a one-lead source; see :func:`ecg_dicom.core.accuracy.source_accuracy`)."""
    return source_accuracy(recon.leads, item.source_leads, item.fs, reconstructor.input_lead)


def result_metadata(item: LeadInput, recon: Reconstruction, reconstructor: Reconstructor,
                    accuracy: dict[str, dict] | None = None) -> dict:
    """The ``<stem>.json`` of a result (the input sidecar's keys where they mean the same).
    ``accuracy``: :func:`result_accuracy`, computed here when not given."""
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
        "fs_source": item.fs_source or None,  # DICOM header, sidecar, given (--fs), assumed (no sidecar)
        "lead": reconstructor.input_lead,
        "input_leads": list(input_leads_of(reconstructor.input_lead)),  # the lead(s) the model was given
        "input_lead": reconstructor.input_lead,
        "units": "uV",
        "leads": list(LEADS_12),
        "model": MODEL_NAME,
        "model_version": reconstructor.model_version,
        "sigma_uv": None if sigma is None else {k: round(v, 2) for k, v in sigma.items()},
        "uncertainty": None if uncertainty is None else uncertainty.to_json(),
        "quality": item.quality.to_json() if item.quality is not None else None,
        **header,
        **({"source_leads": sorted(item.source_leads, key=_lead_order),
            "source_complete": source_complete(item.source_leads),
            "accuracy": accuracy if accuracy is not None else result_accuracy(item, recon, reconstructor)}
           if item.source_leads else {}),
    }


def _lead_order(lead: str) -> int:
    return LEADS_12.index(lead) if lead in LEADS_12 else len(LEADS_12)


def start_page(pages: PageRenderer, item: LeadInput, recon: Reconstruction, reconstructor: Reconstructor,
               paper: str) -> PendingPage:
    """Start drawing a result's page in ``pages``' process, before the rest of the result is
    measured and written (the page does not show the accuracy figures, so it need not wait
    for them); hand it to :func:`write_outputs` as ``page``."""
    meta = result_metadata(item, recon, reconstructor, accuracy={})
    return pages.submit(report_data_from_metadata(recon.leads, meta), paper)


def write_outputs(output_dir: Path, stem: str, item: LeadInput, recon: Reconstruction,
                  reconstructor: Reconstructor, output_format: str, confidence: bool,
                  report: str | None = None, accuracy: dict[str, dict] | None = None,
                  remarks: dict | None = None, page: PendingPage | None = None) -> list[Path]:
    """Write the requested outputs for one converted input; returns the files written, in the
    order of :func:`result_file_names`.

    ``report``: the paper size of the 12-lead page ("A4" or "Letter"), or None for no page;
    ``accuracy``: see :func:`result_metadata`. ``reconstructor``: the model that made ``recon``.
    ``remarks``: more keys for ``<stem>.json`` (e.g. the service's note on a reused source UID).
    ``page``: the page already being drawn (:func:`start_page`, the service: in its own
    process, while the other files are written); without it the page is drawn here, last.
    """
    written: list[Path] = []
    meta = {**result_metadata(item, recon, reconstructor, accuracy), **(remarks or {})}
    complete = bool(meta.get("source_complete"))
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
                                    quality_text=quality_text, sigma_uv=meta["sigma_uv"], source_complete=complete,
                                    uncertainty_text=(meta["uncertainty"] or {}).get("text"))
        written += waveforms
    written.append(write_bytes_atomic(output_dir / f"{stem}.json", json.dumps(meta, indent=2).encode()))
    if confidence:
        text = json.dumps(confidence_report(recon, reconstructor.input_lead, reconstructor.uncertainty(recon)),
                          indent=2)
        written.append(write_bytes_atomic(output_dir / f"{stem}.confidence.json", text.encode()))
    if report:
        pdf = page.result() if page is not None else render(report_data_from_metadata(recon.leads, meta), "pdf",
                                                                report)
        written.append(write_bytes_atomic(output_dir / f"{stem}.pdf", pdf))
        if waveforms:
            from pydicom import dcmread

            from ecg_dicom.dicom.pdf import write_pdf_dicom

            refs = [dcmread(p, specific_tags=["SOPClassUID", "SOPInstanceUID"]) for p in waveforms]
            written.append(write_pdf_dicom(output_dir / f"{stem}{REPORT_SUFFIX}", pdf, reconstructor.model_version,
                                           reconstructor.input_lead, item.dataset, anchor, refs, attributes,
                                           source_complete=complete))
    return written
