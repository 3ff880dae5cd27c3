"""``ecg-dicom convert``: a folder of one-lead inputs -> 12-lead ``.npy`` and/or DICOM files.

Inputs are read and checked one by one (a bad file gets a reason file and the others go
on), converted in shared batches, and written atomically. Nothing in the input folder is
ever modified.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ecg_dicom.core.checkpoint import Checkpoint, Preprocessing
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.model import BiLSTMAttentionModel
from ecg_dicom.errors import EcgDicomError, InputError
from ecg_dicom.files import safe_stem, write_reason
from ecg_dicom.inputs import LeadInput, load_lead, looks_like_input
from ecg_dicom.leads import learned_leads
from ecg_dicom.outputs.results import OUTPUT_FORMATS, write_outputs

log = logging.getLogger(__name__)


@dataclass
class ConvertReport:
    """What a folder conversion did: written files per input stem, and reasons for failures."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def convert_folder(input_dir: str | Path, output_dir: str | Path, reconstructor: Reconstructor,
                   fs: float = 500.0, units: str = "uV", output_format: str = "npy",
                   confidence: bool = False, batch_size: int = 32) -> ConvertReport:
    """Convert every input in ``input_dir`` (not recursive) into ``output_dir``.

    .npy inputs are one lead in ``units`` at ``fs`` Hz; DICOM inputs bring their own. Each
    output is ``<stem>.npy`` (12, N) float32 µV and/or ``<stem>.dcm``. A refused input
    gets ``<stem>.reason.txt`` and a line on stderr.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InputError(f"input folder {input_dir} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in input_dir.iterdir() if looks_like_input(p))
    report = ConvertReport()

    def fail(stem: str, reason: str) -> None:
        report.failed[stem] = reason
        write_reason(output_dir, stem, reason)
        print(f"ecg-dicom: skipped {stem}: {reason}", file=sys.stderr)

    bar = tqdm(total=len(files), unit="ecg", disable=not sys.stderr.isatty())
    for start in range(0, len(files), batch_size):
        batch: list[tuple[str, LeadInput]] = []
        for path in files[start:start + batch_size]:
            stem = safe_stem(path.stem)
            try:
                batch.append((stem, load_lead(path, reconstructor.input_lead, fs, units)))
            except InputError as exc:
                fail(stem, str(exc))
        if batch:
            recons = reconstructor.reconstruct_batch([b.signal_uv for _, b in batch], [b.fs for _, b in batch])
            for (stem, item), recon in zip(batch, recons):
                try:
                    report.written[stem] = write_outputs(output_dir, stem, item, recon, reconstructor,
                                                         output_format, confidence)
                except EcgDicomError as exc:
                    fail(stem, str(exc))
        bar.update(len(files[start:start + batch_size]))
    bar.close()
    return report


def process_and_save_npy_files(input_folder: str | Path, output_folder: str | Path,
                               model: BiLSTMAttentionModel | Reconstructor | str | Path | None,
                               device: str = "cpu") -> ConvertReport:
    """The seed's API: convert every one-lead µV 500 Hz ``.npy`` in a folder to (12, N) µV.

    ``model`` may be a :class:`Reconstructor`, a checkpoint path, ``None`` (the shipped
    lead-I weights) or a bare :class:`BiLSTMAttentionModel` for input lead I with the
    default preprocessing.
    """
    if isinstance(model, Reconstructor):
        reconstructor = model
    elif isinstance(model, BiLSTMAttentionModel):
        checkpoint = Checkpoint(model=model.eval(), input_lead="I", output_leads=learned_leads("I"),
                                model_version="in-memory", preprocessing=Preprocessing())
        reconstructor = Reconstructor(checkpoint, device=device)
    else:
        reconstructor = Reconstructor.from_checkpoint(model, input_lead="I", device=device)
    return convert_folder(input_folder, output_folder, reconstructor)


def run(args: argparse.Namespace) -> int:
    """``ecg-dicom convert``: exit 0 when every input converted, 1 when any failed, 2 on setup errors."""
    try:
        if args.device != "cpu" and not torch.cuda.is_available() and args.device.startswith("cuda"):
            raise EcgDicomError(f"device {args.device} is not available on this machine")
        reconstructor = Reconstructor.from_checkpoint(args.checkpoint, args.input_lead, args.device,
                                                      args.batch_size)
        report = convert_folder(args.input_dir, args.output_dir, reconstructor, args.fs, args.units,
                                args.output_format, args.confidence, args.batch_size)
    except EcgDicomError as exc:
        print(f"ecg-dicom convert: {exc}", file=sys.stderr)
        return 2
    n_ok, n_bad = len(report.written), len(report.failed)
    print(f"converted {n_ok}, failed {n_bad} -> {args.output_dir}", file=sys.stderr)
    return 1 if n_bad else 0
