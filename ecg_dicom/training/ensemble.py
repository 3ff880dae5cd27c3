"""`ecg-dicom ensemble`: combine checkpoints trained by `ecg-dicom train` into one.

Why: averaging members trained from different starts and data mixes beats each member on
held-out databases, and the members' spread makes the per-lead confidence track the real
error far better than one variance head (see the README's model card). The result is an
ordinary checkpoint; every command that takes ``--checkpoint`` reads it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ecg_dicom import __version__
from ecg_dicom.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ecg_dicom.core.model import EnsembleModel
from ecg_dicom.errors import EcgDicomError
from ecg_dicom.training.train import weights_hash


def combine(checkpoints: Sequence[Checkpoint], names: Sequence[str]) -> tuple[EnsembleModel, dict[str, Any]]:
    """Members (same input lead and preprocessing) -> the ensemble and its ``training`` record.

    The record keeps each member's own training record, the union of their training
    records (so `evaluate` still warns about records any member saw), the real records and
    databases that every member held out, and the linear baselines of the first member
    that trained on real records.
    """
    first = checkpoints[0]
    for name, ckpt in zip(names, checkpoints):
        if ckpt.preprocessing != first.preprocessing:
            raise EcgDicomError(f"{name} preprocesses differently from {names[0]}:"
                                f" {ckpt.preprocessing} vs {first.preprocessing}")
    models = [m for ckpt in checkpoints
              for m in (ckpt.model.members if isinstance(ckpt.model, EnsembleModel) else [ckpt.model])]
    try:
        ensemble = EnsembleModel(models).eval()
    except ValueError as exc:
        raise EcgDicomError(f"cannot combine {', '.join(names)}: {exc}") from exc
    datas = [c.training.get("data") if isinstance(c.training.get("data"), dict) else {} for c in checkpoints]
    train_records = sorted({n for d in datas for n in d.get("train_records") or ()})
    with_real = [c for c, d in zip(checkpoints, datas) if d.get("train_records")]
    held_outs = [c.training.get("held_out") or {} for c in with_real]
    excluded = set.intersection(*(set(h.get("excluded_databases") or ()) for h in held_outs)) if held_outs else set()
    unseen = set.intersection(*(set(h.get("validation_records") or ()) for h in held_outs)) if held_outs else set()
    training = {
        "members": [{"checkpoint": name, "model_version": c.model_version,
                     **{k: c.training.get(k) for k in ("command", "data", "pretraining", "seed", "epochs", "date")}}
                    for name, c in zip(names, checkpoints)],
        "data": {"train_records": train_records,
                 "databases": sorted({db for d in datas for db in (d.get("databases") or {})})},
        # real records and databases that no member trained on
        "held_out": {"validation_records": sorted(unseen - set(train_records)),
                     "excluded_databases": sorted(excluded)},
        "baselines": (with_real or checkpoints)[0].training.get("baselines"),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": str(torch.__version__),
    }
    return ensemble, training


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ecg-dicom ensemble``."""
    try:
        checkpoints = [load_checkpoint(p, input_lead=args.input_lead) for p in args.members]
        model, training = combine(checkpoints, [str(p) for p in args.members])
    except EcgDicomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    training["command"] = ("ecg-dicom ensemble " + " ".join(shlex.quote(a) for a in sys.argv[2:])
                           if len(sys.argv) > 1 and sys.argv[1] == "ensemble" else "ecg-dicom ensemble (API call)")
    version = f"{__version__}+lead{args.input_lead}.ens{len(model.members)}.{weights_hash(model)[:10]}"
    save_checkpoint(Path(args.out), model, args.input_lead, version, checkpoints[0].preprocessing, training)
    print(f"wrote {args.out} ({len(model.members)} members, model version {version})")
    return 0
