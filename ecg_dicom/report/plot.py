"""``ecg-dicom plot RESULT [--out FILE.pdf|FILE.png]``: the 12-lead page of a result.

RESULT is a result ``.npy`` ((12, N) µV, with its ``<stem>.json`` beside it for the rate,
measured lead, model, uncertainty, quality and patient) or a result ``.dcm`` (our 12-lead
waveform object, which carries all of that itself). A recorded 12-lead DICOM ECG (a cart's
own object, nothing reconstructed) is drawn as recorded: all leads black as measured, under
a banner that says so, never as AI leads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ecg_dicom.core.quality import Flag, QualityReport
from ecg_dicom.errors import EcgDicomError, InputError
from ecg_dicom.files import write_bytes_atomic
from ecg_dicom.leads import LEADS_12
from ecg_dicom.report import ReportData, render, report_data_from_metadata


def _quality_from_text(text: str | None) -> QualityReport | None:
    """The gate's verdict back from its one-line DICOM annotation."""
    if not text:
        return None
    _, _, verdict = text.partition(": ")
    status, _, rest = verdict.partition(": ")
    status = status.strip().lower()
    if status.startswith("ok"):
        return QualityReport("ok")
    return QualityReport(status, [Flag("annotation", status, part) for part in rest.split("; ") if part])


def load_result(path: str | Path) -> ReportData:
    """The page's data from a result ``.npy`` (+ ``.json``) or a result ``.dcm``. Raises InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    if path.suffix.lower() == ".npy":
        try:
            leads = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a readable .npy file: {exc}") from exc
        if leads.ndim != 2 or leads.shape[0] != len(LEADS_12) or leads.dtype.kind not in "iuf":
            raise InputError(f"not a 12-lead result: shape {leads.shape}, expected (12, N) µV")
        sidecar = path.with_suffix(".json")
        meta: dict = {}
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{sidecar.name} is not readable JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise InputError(f"{sidecar.name} must hold a JSON object")
        else:
            print(f"ecg-dicom plot: no {sidecar.name} beside the result: assuming 500 Hz, lead I measured,"
                  " no patient data", file=sys.stderr)
        return report_data_from_metadata(leads, meta)
    from ecg_dicom.dicom.provenance import header_fields
    from ecg_dicom.dicom.reader import read_result_object

    result = read_result_object(path)
    if not result.reconstructed:
        print(f"ecg-dicom plot: {path.name} is a recorded 12-lead ECG, not a result of ours: drawn as"
              " recorded, every lead measured", file=sys.stderr)
    return ReportData(result.leads_uv, result.fs, result.input_lead, result.model_name, result.model_version,
                      header_fields(result.dataset), result.sigma_uv or None,
                      _quality_from_text(result.quality_text), recorded=not result.reconstructed)


def run(args: argparse.Namespace) -> int:
    """``ecg-dicom plot``: 0 when the page was written, 2 when the result cannot be read."""
    out = Path(args.out) if args.out else Path(args.result).with_suffix(".pdf")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("pdf", "png"):
        print(f"ecg-dicom plot: --out must end in .pdf or .png, got {out.name}", file=sys.stderr)
        return 2
    try:
        data = load_result(args.result)
        page = render(data, fmt, args.paper, args.dpi)
    except EcgDicomError as exc:
        print(f"ecg-dicom plot: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, page)
    print(out)
    return 0
