"""What runs the network over model windows: exact fp32 PyTorch, or ONNX Runtime.

Both take the model features of a batch of windows and give back the predicted means and
log-variances, so :class:`ecg_dicom.core.inference.Reconstructor` does not care which runs:

- :class:`TorchRunner`: the checkpoint's own ``nn.Module`` in float32, the reference
  (``--precision fp32``). Importing torch alone takes ~1 s.
- :class:`OnnxRunner`: the graph :mod:`ecg_dicom.core.export` wrote beside the checkpoint
  (``lead_I.onnx`` beside ``lead_I.pt``), run by ONNX Runtime, possibly with int8
  weights; no torch in the process. The default wherever its outputs hold the reference's
  quality (``ecg-dicom export`` measures that and records it in the file).

Thread policy (both): at most one thread per CPU this process may use, and no
spin-waiting. Runtimes that spin keep every core busy while waiting for their slowest
thread; beside another busy process that made one conversion 5.8x slower than one thread.
``ECG_DICOM_THREADS`` (or ``--threads``) overrides the count.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ecg_dicom.extras import require

if TYPE_CHECKING:
    from ecg_dicom.core.checkpoint import Checkpoint

ONNX_FORMAT = "ecg-dicom-onnx"
ONNX_FORMAT_VERSION = 1
THREADS_ENV = "ECG_DICOM_THREADS"
PRECISIONS = ("fast", "fp32")  # fast: the exported graph when it matches the checkpoint; fp32: torch


class ModelRunner(Protocol):
    """Runs the network: (W, features, L) float32 -> ((W, leads, L) mV, (W, leads, L) log mV² or None)."""

    name: str
    flops_per_window: float

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(requested: int | None = None) -> int:
    """Threads for the model runtime: ``requested``, else ``$ECG_DICOM_THREADS``, else one per usable CPU."""
    if requested:
        return max(1, int(requested))
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={env!r} is not a number of threads") from None
    return usable_cpus()


def onnx_path_for(checkpoint_path: str | Path) -> Path:
    """Where the exported graph of a checkpoint lives: ``x.pt`` -> ``x.onnx`` beside it."""
    return Path(checkpoint_path).with_suffix(".onnx")


class TorchRunner:
    """The checkpoint's ``nn.Module`` in float32 under ``torch.inference_mode``, ``batch_size``
    windows a pass; ``threads`` sets torch's intra-op threads (None: leave them as they are);
    ``window``: the model window (samples), for :attr:`flops_per_window`."""

    def __init__(self, model: Any, device: str = "cpu", batch_size: int = 32, threads: int | None = None,
                 window: int = 0) -> None:
        torch = require("torch", "--precision fp32")

        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.name = "torch fp32"
        self.window = window

    @property
    def flops_per_window(self) -> float:
        return float(self.model.flops(self.window))

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        means, log_vars = [], []
        with torch.inference_mode():
            for i in range(0, len(features), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(features[i:i + self.batch_size])).to(self.device)
                mean, log_var = self.model(batch)
                means.append(mean.float().cpu().numpy())
                if log_var is not None:
                    log_vars.append(log_var.float().cpu().numpy())
        return np.concatenate(means), (np.concatenate(log_vars) if log_vars else None)


@dataclass
class OnnxHeader:
    """What an exported graph says about itself (its metadata): the checkpoint header it
    was made from (lead, version, preprocessing, training record), that checkpoint's
    sha256, the precision of its weights and the FLOPs of one window."""

    input_lead: str
    output_leads: tuple[str, ...]
    model_version: str
    preprocessing: dict
    training: dict
    metrics: dict
    source_sha256: str
    precision: str
    flops_per_window: float
    export: dict

    def to_metadata(self) -> dict[str, str]:
        return {"format": ONNX_FORMAT, "format_version": str(ONNX_FORMAT_VERSION),
                "input_lead": self.input_lead, "output_leads": json.dumps(list(self.output_leads)),
                "model_version": self.model_version, "preprocessing": json.dumps(self.preprocessing),
                "training": json.dumps(self.training, default=str), "metrics": json.dumps(self.metrics, default=str),
                "source_sha256": self.source_sha256, "precision": self.precision,
                "flops_per_window": repr(float(self.flops_per_window)), "export": json.dumps(self.export)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "OnnxHeader":
        from ecg_dicom.errors import CheckpointError

        if meta.get("format") != ONNX_FORMAT:
            raise CheckpointError(f"{path} is not an ecg-dicom ONNX export (no format '{ONNX_FORMAT}')")
        if meta.get("format_version") != str(ONNX_FORMAT_VERSION):
            raise CheckpointError(f"{path} has ONNX export format {meta.get('format_version')}, this code reads"
                                  f" {ONNX_FORMAT_VERSION}: run `ecg-dicom export` again")
        try:
            return cls(meta["input_lead"], tuple(json.loads(meta["output_leads"])), meta["model_version"],
                       json.loads(meta["preprocessing"]), json.loads(meta["training"]), json.loads(meta["metrics"]),
                       meta["source_sha256"], meta["precision"], float(meta["flops_per_window"]),
                       json.loads(meta["export"]))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: incomplete export metadata ({exc})") from exc

    def checkpoint(self) -> "Checkpoint":
        """The header as a :class:`Checkpoint` without a torch model (``model`` is None)."""
        from ecg_dicom.core.checkpoint import Checkpoint, Preprocessing

        return Checkpoint(model=None, input_lead=self.input_lead, output_leads=self.output_leads,
                          model_version=self.model_version, preprocessing=Preprocessing(**self.preprocessing),
                          training=self.training, metrics=self.metrics)


class OnnxRunner:
    """An exported graph (:mod:`ecg_dicom.core.export`) under ONNX Runtime on the CPU.

    ``threads`` intra-op threads (default :func:`default_threads`), spinning off (see the
    module docstring); ``batch_size`` windows per run (the graph takes any batch). An int8
    graph runs one window per run, whatever ``batch_size`` says: dynamic quantisation takes
    its activation scales from the whole batch, so a window's output would depend on the
    windows beside it (up to 20 µV here); alone, a record always gets the same result. It
    costs nothing: one window per run was also the fastest (560-660 against 340-510
    windows per CPU-second at 64 a run).
    """

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 64) -> None:
        import onnxruntime as ort

        from ecg_dicom.errors import CheckpointError

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # no warnings about unused initializers on stderr
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise CheckpointError(f"{self.path} is not a readable ONNX graph: {exc}") from exc
        self.header = OnnxHeader.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.n_outputs = len(self.session.get_outputs())
        self.batch_size = 1 if self.header.precision == "int8" else int(batch_size)
        self.options = options
        self.threads = options.intra_op_num_threads
        self.flops_per_window = self.header.flops_per_window
        self.name = f"onnxruntime {self.header.precision}"

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        means, log_vars = [], []
        for i in range(0, len(features), self.batch_size):
            batch = np.ascontiguousarray(features[i:i + self.batch_size], dtype=np.float32)
            out = self.session.run(None, {self.input_name: batch})
            means.append(out[0])
            if self.n_outputs > 1:
                log_vars.append(out[1])
        return np.concatenate(means), (np.concatenate(log_vars) if log_vars else None)
