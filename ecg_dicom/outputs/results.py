"""The result files of one reconstruction: ``<stem>.npy``, ``<stem>.dcm`` and, on request,
``<stem>.confidence.json``. Shared by ``convert`` and the service's worker, so both doors
write the same files the same way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ecg_dicom.core.inference import Reconstruction, Reconstructor
from ecg_dicom.dicom.writer import dicom_file_names, write_ecg_dicom
from ecg_dicom.files import write_bytes_atomic, write_npy_atomic
from ecg_dicom.inputs import LeadInput
from ecg_dicom.leads import LEADS_12, learned_leads

OUTPUT_FORMATS = ("npy", "dicom", "both")


def confidence_report(recon: Reconstruction, input_lead: str) -> dict:
    """Per learned lead: the model's RMS uncertainty (µV) and the same relative to the lead's std.

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
    return {"available": True, "leads": leads}


def result_file_names(stem: str, n_samples: int, fs: float, output_format: str, confidence: bool) -> list[str]:
    """The files :func:`write_outputs` writes for a (12, ``n_samples``) result at ``fs`` Hz."""
    names = []
    if output_format in ("npy", "both"):
        names.append(f"{stem}.npy")
    if output_format in ("dicom", "both"):
        names += dicom_file_names(stem, n_samples, fs)
    if confidence:
        names.append(f"{stem}.confidence.json")
    return names


def write_outputs(output_dir: Path, stem: str, item: LeadInput, recon: Reconstruction,
                  reconstructor: Reconstructor, output_format: str, confidence: bool) -> list[Path]:
    """Write the requested outputs for one converted input; returns the files written."""
    written: list[Path] = []
    if output_format in ("npy", "both"):
        written.append(write_npy_atomic(output_dir / f"{stem}.npy", recon.leads))
    if output_format in ("dicom", "both"):
        anchor = item.content_hash
        if item.sidecar is not None:  # the same samples under another patient or rate: other UIDs
            anchor = hashlib.sha256(f"{item.content_hash}\n{item.sidecar.canonical()}".encode()).hexdigest()
        written += write_ecg_dicom(output_dir, stem, recon.leads, item.fs, reconstructor.model_version,
                                   reconstructor.input_lead, item.dataset, anchor,
                                   item.sidecar.attributes if item.sidecar is not None else None)
    if confidence:
        report = json.dumps(confidence_report(recon, reconstructor.input_lead), indent=2)
        written.append(write_bytes_atomic(output_dir / f"{stem}.confidence.json", report.encode()))
    return written
