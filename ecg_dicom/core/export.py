"""``ecg-dicom export``: a checkpoint -> the ONNX graph that the fast path runs, beside it.

    ecg-dicom export [--input-lead I] [--checkpoint CKPT] [--precision int8|fp32] [--out X.onnx]

Any checkpoint of this model family (one :class:`BiLSTMAttentionModel` or an
:class:`EnsembleModel`, whose averaging and mixture variance are part of the graph) is
traced with ``torch.onnx.export`` (the torch.export-based exporter), constant-folded by
ONNX Runtime and, with ``--precision int8`` (the default), given int8 weights for its LSTM
and matrix products (ONNX Runtime dynamic quantisation: activations are quantised per
batch at run time; convolutions stay fp32, their int8 kernels are slower here). The file
carries the checkpoint's header and the sha256 of the checkpoint it came from, so
:meth:`Reconstructor.from_checkpoint` runs it only for exactly those weights: after new
weights land, ``ecg-dicom export`` (``make export``) brings the fast path up to date.

Needs the ``export`` extra (onnx, onnxscript) and torch; running the result needs only
onnxruntime and numpy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ecg_dicom.core.checkpoint import load_checkpoint, shipped_checkpoint_path
from ecg_dicom.core.runners import OnnxHeader, OnnxRunner, onnx_path_for
from ecg_dicom.errors import EcgDicomError
from ecg_dicom.extras import require
from ecg_dicom.files import file_sha256, write_bytes_atomic

EXPORT_PRECISIONS = ("int8", "fp32")
OPSET = 18
QUANTIZED_OPS = ("LSTM", "MatMul", "Gemm")
# The export is refused when the graph's output on a test window strays further than this
# from the checkpoint's own (mV): a broken export, not a rounding difference.
SANITY_MAX_ABS_MV = 0.05


def test_windows(window: int, fs: float, n: int = 4, seed: int = 0) -> np.ndarray:
    """(n, window) µV: ECG-like test windows (spiky beats, baseline wander, noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(window) / fs
    rows = []
    for _ in range(n):
        rate = rng.uniform(0.8, 2.0)
        beats = 1200 * np.sin(np.pi * rate * t + rng.uniform(0, np.pi)) ** 40
        rows.append(beats + 200 * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0, 15, window))
    return np.stack(rows)


def export_onnx(checkpoint_path: str | Path | None = None, input_lead: str = "I", out: str | Path | None = None,
                precision: str = "int8") -> tuple[Path, dict]:
    """Export a checkpoint (default: the shipped one for ``input_lead``) to ``out`` (default:
    beside it, ``.onnx``); returns the path and the check recorded in its metadata."""
    for module in ("onnx", "onnxscript"):  # torch.onnx's exporter needs both
        require(module, "exporting a checkpoint", extra="export")
    torch = require("torch", "exporting a checkpoint", extra="export")

    from ecg_dicom.core.preprocess import lead_features
    from ecg_dicom.leads import input_leads_of

    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {EXPORT_PRECISIONS}")
    source = Path(checkpoint_path) if checkpoint_path is not None else shipped_checkpoint_path(input_lead)
    checkpoint = load_checkpoint(source, input_lead=input_lead)
    out = Path(out) if out is not None else onnx_path_for(source)
    model, pre = checkpoint.model.eval(), checkpoint.preprocessing
    has_variance = model(torch.zeros(1, model.config.in_features, pre.window))[1] is not None

    class Graph(torch.nn.Module):
        """The model with a fixed output signature: mean (and log-variance)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, features: torch.Tensor):
            mean, log_var = self.model(features)
            return (mean, log_var) if has_variance else mean

    windows = test_windows(pre.window, pre.fs)
    n_in = len(input_leads_of(checkpoint.input_lead))
    if n_in > 1:  # the two-lead model: each test window beside another one (a second lead)
        windows = np.stack([np.roll(windows, k, axis=0) * (1.0 - 0.2 * k) for k in range(n_in)], axis=1)
    example = torch.from_numpy(lead_features(windows, n_in))
    names = ["out_mean_mv", "out_log_var"] if has_variance else ["out_mean_mv"]
    with tempfile.TemporaryDirectory(prefix="ecg-dicom-export-") as tmp_name:
        tmp = Path(tmp_name)
        # the exporter narrates its steps on stdout and warns about torch internals: kept quiet
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(Graph().eval(), (example,), str(tmp / "traced.onnx"), dynamo=True,
                              input_names=["features"], output_names=names, opset_version=OPSET,
                              dynamic_shapes=({0: torch.export.Dim("windows")},), external_data=False,
                              verbose=False)
        folded = _fold_constants(tmp / "traced.onnx", tmp / "folded.onnx")
        final = _quantize(folded, tmp / "int8.onnx") if precision == "int8" else folded
        with torch.no_grad():
            reference = [t.numpy() for t in model(example) if t is not None]
        header = OnnxHeader(
            input_lead=checkpoint.input_lead, output_leads=checkpoint.output_leads,
            model_version=checkpoint.model_version, preprocessing=pre.to_dict(), training=checkpoint.training,
            metrics=checkpoint.metrics, source_sha256=file_sha256(source), precision=precision,
            flops_per_window=float(model.flops(pre.window)),
            export={"source": source.name, "torch": torch.__version__, "opset": OPSET,
                    "quantized_ops": list(QUANTIZED_OPS) if precision == "int8" else []})
        _set_metadata(final, header)
        check = _check(final, example.numpy(), reference)
        if check["max_abs_mv"] > SANITY_MAX_ABS_MV:
            raise EcgDicomError(f"the exported graph strays {check['max_abs_mv']:.3g} mV from the checkpoint on a"
                                f" test window (more than {SANITY_MAX_ABS_MV} mV): not written")
        write_bytes_atomic(out, final.read_bytes())
    return out, check


def _fold_constants(src: Path, dst: Path) -> Path:
    """ONNX Runtime's basic graph optimisations (constant folding, no runtime-specific
    fusions), saved: the LSTM weights become plain initialisers the quantiser can see."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def _quantize(src: Path, dst: Path) -> Path:
    """int8 weights (per tensor, symmetric) for the LSTM and matrix products; activations
    quantised per run (dynamic)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser's advice goes to the root logger: not shown
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(QUANTIZED_OPS), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return dst


def _set_metadata(path: Path, header: OnnxHeader) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, header.to_metadata())
    proto.producer_name = "ecg-dicom export"
    onnx.save(proto, str(path))


def _check(path: Path, features: np.ndarray, reference: list[np.ndarray]) -> dict:
    """Largest deviation (mV, and log-variance) of the graph from the checkpoint on the test windows."""
    runner = OnnxRunner(path, threads=1)
    mean, log_var = runner.predict(features)
    check = {"max_abs_mv": float(np.abs(mean - reference[0]).max())}
    if log_var is not None:
        check["max_abs_log_var"] = float(np.abs(log_var - reference[1]).max())
    return check


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ecg-dicom export``: 0 when written, 2 on errors."""
    try:
        out, check = export_onnx(args.checkpoint, args.input_lead, args.out, args.precision)
    except (EcgDicomError, ImportError) as exc:
        print(f"ecg-dicom export: {exc}", file=sys.stderr)
        return 2
    text = ", ".join(f"{k} {v:.2g}" for k, v in check.items())
    print(f"wrote {out} ({args.precision}); on test windows against the checkpoint: {text}", file=sys.stderr)
    return 0
