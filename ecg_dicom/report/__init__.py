"""The 12-lead report page a clinician reads: drawing (:mod:`.page`) and ``ecg-dicom plot``
(:mod:`.plot`). The DICOM Encapsulated PDF object that carries it is :mod:`ecg_dicom.dicom.pdf`."""

from __future__ import annotations

import numpy as np

from ecg_dicom.core.quality import QualityReport
from ecg_dicom.report.page import PAPER_MM, ReportData, render

HEADER_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AcquisitionDateTime",
               "Manufacturer", "ManufacturerModelName", "InstitutionName")

__all__ = ["PAPER_MM", "ReportData", "render", "report_data_from_metadata"]


def report_data_from_metadata(leads_uv: np.ndarray, meta: dict) -> ReportData:
    """A page's data from a (12, N) µV array and a result's ``<stem>.json`` (or an input sidecar
    carrying patient/study keys): unknown keys are ignored, missing ones shown as unknown."""
    quality = meta.get("quality")
    header = {k: str(meta[k]) for k in HEADER_KEYS if meta.get(k) not in (None, "")}
    if not header.get("ManufacturerModelName") and meta.get("device"):
        header["ManufacturerModelName"] = str(meta["device"])
    return ReportData(
        leads_uv=np.asarray(leads_uv, dtype=np.float64),
        fs=float(meta.get("fs", 500.0)),
        input_lead=str(meta.get("input_lead", meta.get("lead", "I"))),
        model_name=str(meta.get("model", "unknown model")),
        model_version=str(meta.get("model_version", "unknown")),
        header=header,
        sigma_uv={str(k): float(v) for k, v in meta["sigma_uv"].items()} if meta.get("sigma_uv") else None,
        quality=QualityReport.from_json(quality) if isinstance(quality, dict) else None,
        uncertainty_text=str(meta["uncertainty"]["text"]) if isinstance(meta.get("uncertainty"), dict)
        and meta["uncertainty"].get("text") else None,
        source_complete=meta.get("source_complete") is True,
        fs_source=str(meta["fs_source"]) if meta.get("fs_source") else None,
    )
