"""Command line (argparse). Each subcommand hands its Namespace to the module that owns it
(:data:`_COMMANDS`); what ``ecg-dicom --help`` shows is :data:`DESCRIPTION`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ecg_dicom import __version__
from ecg_dicom.errors import MissingExtraError
from ecg_dicom.extras import missing_extra, missing_module
from ecg_dicom.core.leadchoice import INPUT_LEAD_CHOICES
from ecg_dicom.leads import MODEL_INPUTS, SUPPORTED_INPUT_LEADS

DESCRIPTION = """\
Reconstruct a 12-lead ECG from one lead (I or II), in files or as a DICOM service.

  ecg-dicom convert  IN OUT                   one-lead .npy / DICOM files -> 12-lead .npy / DICOM
  ecg-dicom serve     --config SITE.yaml      the service: C-STORE listener + watched folder -> PACS
  ecg-dicom status    --config SITE.yaml      is it running, its queue, recent rejections and dead letters
  ecg-dicom redeliver --config SITE.yaml ...  send results to the PACS again
  ecg-dicom plot      RESULT                  the 12-lead page of a result (PDF or PNG)
  ecg-dicom train / ensemble / evaluate       reproduce and measure the model
  ecg-dicom export    [--checkpoint CKPT]     the fast path's ONNX graph of a checkpoint, beside it

From a source checkout, after `make serve` or `make install`: .venv/bin/ecg-dicom ...
Help on one command: ecg-dicom COMMAND --help
AI-reconstructed leads are an estimate, not for diagnosis."""

# subcommand -> module whose ``run(args) -> int`` carries it out
_COMMANDS = {
    "convert": "ecg_dicom.convert",
    "train": "ecg_dicom.training.train",
    "ensemble": "ecg_dicom.training.ensemble",
    "export": "ecg_dicom.core.export",
    "evaluate": "ecg_dicom.training.evaluate",
    "plot": "ecg_dicom.report.plot",
    "serve": "ecg_dicom.service.app",
    "status": "ecg_dicom.service.status",
    "redeliver": "ecg_dicom.service.redeliver",
}

# subcommand -> the extra of pyproject.toml it needs whole (others: the extra of what is missing)
_EXTRAS = {"train": "train", "export": "export"}


AUTO_LEAD_HELP = ("lead given to the model: I, II, I+II (the two-lead model: both leads measured), or auto: for a source holding several leads (a 12-lead DICOM"
                  " object) the one the model does best from (I unless it is near-isoelectric or refused by the"
                  " signal-quality gate and II is fine), for a .npy its sidecar's lead, else I (default I)")


def _add_model_args(p: argparse.ArgumentParser, auto: bool = False) -> None:
    """The model's arguments; ``auto``: --input-lead may also be ``auto`` (core/leadchoice.py)."""
    p.add_argument("--input-lead", choices=INPUT_LEAD_CHOICES if auto else MODEL_INPUTS, default="I",
                   help=AUTO_LEAD_HELP if auto else "lead given to the model (default I)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (default: the one shipped for --input-lead)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--precision", choices=("fast", "fp32"), default="fast",
                   help="fast: the checkpoint's ONNX export (int8 weights, ONNX Runtime) when it matches the"
                        " checkpoint (default); fp32: the checkpoint itself in exact fp32 (torch)")
    p.add_argument("--threads", type=int, default=None,
                   help="model threads (default: $ECG_DICOM_THREADS, else one per CPU; no spin-waiting)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-dicom", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ecg-dicom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a folder of one-lead ECGs to 12-lead ECGs")
    p.add_argument("input_dir", help="folder (tree) of inputs: .npy (+ <stem>.json sidecar), DICOM, GE MUSE / "
                   "Philips / HL7 aECG XML, WFDB records (.hea + signal files)")
    p.add_argument("output_dir", help="where the results go, in the same layout")
    p.add_argument("--fs", type=float, default=None,
                   help="sampling rate of .npy inputs without a sidecar saying otherwise, Hz (default: 500,"
                        " assumed, and said so on stderr and in each result's .json and page)")
    p.add_argument("--units", choices=("uV", "mV"), default="uV",
                   help="units of .npy inputs without a sidecar saying otherwise (default uV)")
    p.add_argument("--format", choices=("npy", "dicom", "both"), default="npy", dest="output_format",
                   help="what to write per input (default npy)")
    p.add_argument("--confidence", action="store_true",
                   help="also write <stem>.confidence.json with a per-lead reliability estimate")
    p.add_argument("--report", action="store_true",
                   help="also draw the 12-lead page: <stem>.pdf (and <stem>.report.dcm with --format dicom|both)")
    p.add_argument("--paper", choices=("A4", "Letter"), default="A4", help="report page size (default A4)")
    _add_model_args(p, auto=True)
    p.add_argument("--engine", choices=("single", "ray"), default="single",
                   help="single: this process (default); ray: Ray Data workers (pip install '.[scale]')")
    ray = p.add_argument_group("Ray engine (--engine ray)")
    ray.add_argument("--address", default=None,
                     help="join a running Ray cluster (auto, or HOST:PORT); default: start a local instance")
    ray.add_argument("--num-workers", type=int, default=None,
                     help="model workers, one CPU each (default: one per CPU of the cluster)")
    ray.add_argument("--ray-temp-dir", default=None,
                     help="where a local Ray instance keeps logs, sockets and spilled objects"
                          " (default: a fresh folder in $TMPDIR, removed after a clean run)")

    p = sub.add_parser("train", help="train a checkpoint from real WFDB records and/or synthetic ECGs")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--input-lead", choices=MODEL_INPUTS, default="I",
                   help="the lead(s) the model takes: I, II or I+II (both, learning V1-V6)")
    p.add_argument("--real", nargs="*", default=[], help="folders of WFDB 12-lead records (searched recursively)")
    p.add_argument("--exclude-db", nargs="*", default=[], help="database folder names to leave out (held out)")
    p.add_argument("--synthetic", type=int, default=0, help="number of deepfake-ecg records to generate and use")
    p.add_argument("--synthetic-dir", default=None, help="cache folder for generated synthetic records")
    p.add_argument("--epochs", type=int, default=30, help="passes of --steps-per-epoch batches (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, crops and augmentation")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the record-wise validation split (default 0: the same held-out records for every --seed)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--init", default=None, help="checkpoint to start from (fine-tuning)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (weights are reproducible for a fixed thread count)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--steps-per-epoch", type=int, default=16, help="batches per epoch")
    p.add_argument("--batch-size", type=int, default=16, help="crops per batch")
    p.add_argument("--real-fraction", type=float, default=0.5,
                   help="share of real crops per batch when --synthetic is mixed with --real")
    p.add_argument("--shape-share", type=float, default=0.5,
                   help="share of the real crops drawn from amplitude-normalised records (LUDB)")
    p.add_argument("--lowrate-weight", type=float, default=1.0,
                   help="draw weight of a record stored below the model rate (PTB-XL 100 Hz) vs a full-rate one")
    p.add_argument("--db-power", type=float, default=1.0,
                   help="a database's share of the physical-amplitude crops ~ (its records)^P (default 1: in"
                        " proportion; 0.5 keeps a 40-record hospital from being drowned by PTB-XL)")
    p.add_argument("--std-weight", type=float, default=1.0,
                   help="weight of the (log std ratio)^2 loss term against amplitude collapse (default 1)")
    p.add_argument("--ectopic-weight", type=float, default=1.0,
                   help="draw weight of a record whose recorded beats include ectopic ones vs one without")
    p.add_argument("--band-limited-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="compare prediction and target low-passed alike on records stored below the model rate")
    p.add_argument("--patient-fold", nargs="*", default=[], metavar="DB:K/N",
                   help="hold out fold K of N of a database's patients (e.g. ptbxl:0/5); evaluate takes the same")
    p.add_argument("--augment", choices=("carts", "legacy"), default="carts",
                   help="input augmentation: what real carts deliver (default) or the first models' lighter set")
    p.add_argument("--select", choices=("best", "last"), default="best",
                   help="keep the epoch of lowest validation loss or the final weights")
    pre = p.add_argument_group("preprocessing (default: the first shipped models'; ignored with --init)")
    pre.add_argument("--model-fs", type=float, default=250.0, help="model rate, Hz (250)")
    pre.add_argument("--window-s", type=float, default=5.0, help="inference window, s (5)")
    pre.add_argument("--hop-s", type=float, default=None, help="inference hop, s (half the window)")
    pre.add_argument("--crop-s", type=float, default=None, help="training crop, s (the window)")
    pre.add_argument("--input-highpass", type=float, default=0.0,
                     help="high-pass the input at this many Hz before the model (0: none)")
    size = p.add_argument_group("model size (default: the shipped models'; ignored with --init, which keeps its own)")
    size.add_argument("--stem-channels", type=int, help="full-rate conv stem width (64)")
    size.add_argument("--stride", type=int, help="the LSTM runs at the model rate / stride (5)")
    size.add_argument("--hidden", type=int, help="LSTM hidden size per direction (64)")
    size.add_argument("--lstm-layers", type=int, help="stacked bidirectional LSTM layers (2)")
    size.add_argument("--heads", type=int, help="attention heads over time (4)")
    size.add_argument("--stem-kernel", type=int, help="kernel of the full-rate stem convolutions (7)")
    size.add_argument("--down-channels", type=int, help="width of the strided conv feeding the LSTM (the stem's)")
    size.add_argument("--head-channels", type=int, help="width of the full-rate head (the stem's)")
    size.add_argument("--head-kernel", type=int, help="kernel of the full-rate head convolution (5)")
    size.add_argument("--upsample", choices=("transposed", "linear"),
                      help="LSTM rate back to the model rate: transposed conv (default) or 1x1 conv + linear")

    p = sub.add_parser("ensemble", help="combine checkpoints trained by `train` into one averaged checkpoint")
    p.add_argument("members", nargs="+", help="checkpoint files (at least two models in all)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--input-lead", choices=SUPPORTED_INPUT_LEADS, default="I", help="the lead the members take")

    p = sub.add_parser("export", help="write the ONNX graph of a checkpoint beside it (the fast path)")
    p.add_argument("--input-lead", choices=MODEL_INPUTS, default="I",
                   help="the lead the checkpoint takes (default I)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the one shipped for --input-lead)")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                   help="weights of the LSTM and matrix products in the graph (default int8)")
    p.add_argument("--out", default=None, help="where to write it (default: beside the checkpoint, .onnx)")

    p = sub.add_parser("evaluate", help="per-lead r / RMSE (µV) / std ratio vs linear baselines")
    p.add_argument("data", nargs="+", help="folders of WFDB records or of (12, N) µV .npy arrays")
    p.add_argument("--fs", type=float, default=500.0, help="sampling rate of .npy arrays, Hz")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--baseline-data", nargs="*", default=None,
                   help="records to fit the linear baselines on (default: the checkpoint's training data)")
    p.add_argument("--patient-fold", nargs="*", default=[], metavar="DB:K/N",
                   help="only the records of fold K of N of a database's patients (as train --patient-fold)")
    _add_model_args(p)

    p = sub.add_parser("plot", help="draw the 12-lead page of a result (.npy with its .json, or .dcm)")
    p.add_argument("result", help="a result <stem>.npy (with <stem>.json beside it) or <stem>.dcm")
    p.add_argument("--out", default=None, help="FILE.pdf or FILE.png (default: <stem>.pdf beside the result)")
    p.add_argument("--paper", choices=("A4", "Letter"), default="A4", help="page size (default A4)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of a PNG (default 150)")

    config_help = "the site YAML file (e.g. config/site.yaml)"
    p = sub.add_parser("serve", help="run the DICOM service (C-STORE listener, watched folder, delivery to PACS)")
    p.add_argument("--config", required=True, help=config_help)

    p = sub.add_parser("status", help="is the service running; its queue; recent rejections and dead letters",
                       epilog="exit status: 0 running (and /health ready, where http is configured), 1 a job"
                              " asked for does not exist, 2 bad configuration, 3 NOT RUNNING, 4 running but"
                              " /health degraded, unavailable or not answering")
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("jobs", nargs="*", type=int, metavar="JOB",
                   help="show these jobs in full: origin, name, state, reason and the result files they made")
    p.add_argument("--recent", type=int, default=10, help="how many recent rejections / dead letters to list (10)")
    p.add_argument("--json", action="store_true", help="print it as one JSON object")
    p.add_argument("--accuracy", action="store_true",
                   help="the accuracy monitor instead: per source device model and lead, n, median and 10th-percentile"
                        " r of the reconstructions against the leads 12-lead sources measured, and the trend")
    p.add_argument("--since", metavar="WHEN", default=None,
                   help="with --accuracy: only records since WHEN (2026-12-01, or 90m / 2h / 7d / 1w ago)")

    p = sub.add_parser("redeliver", help="send results to the PACS again (made before it was configured, "
                                         "or dead-lettered before a fault was fixed)")
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job ids (see ecg-dicom status)")
    p.add_argument("--dead-letter", action="store_true", help="every dead-lettered job")
    p.add_argument("--since", metavar="WHEN",
                   help="jobs changed since WHEN: 2026-12-01, 2026-12-01T18:00, or 90m / 2h / 3d / 1w ago;"
                        " alone: done and dead-lettered jobs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ecg-dicom``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(_COMMANDS[args.command])
        return int(module.run(args) or 0)
    except MissingExtraError as exc:
        print(f"ecg-dicom {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # one imported at the top of a command's module (train)
        missing = missing_module(exc)
        if missing is None:
            raise
        error = missing_extra(missing, "this command", _EXTRAS.get(args.command))
        print(f"ecg-dicom {args.command}: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ecg-dicom status ... | head`: the reader has gone, and that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
