"""What the benchmarks share: real inputs, timed `ecg-dicom convert` processes, matmul limits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PTBXL = REPO.parent / "shared" / "data" / "ecg12" / "ptbxl"
FS = 500.0


def make_archive(root: Path, n: int, only_500hz: bool = False) -> int:
    """Write lead I (µV, float32, 500 Hz) of the first ``n`` PTB-XL records under ``root`` in
    PTB-XL's layout (records500/00000/00001_hr.npy, ...); the 100 Hz records are brought to
    500 Hz with the product's linear resampling unless ``only_500hz``; records repeat if
    there are fewer than ``n``."""
    import wfdb

    from ecg_dicom.core.preprocess import resample_fs

    headers = sorted(PTBXL.glob("records500/*/*.hea" if only_500hz else "records*/*/*.hea"))
    if not headers:
        raise SystemExit(f"no PTB-XL records under {PTBXL}")
    for i in range(n):
        header = headers[i % len(headers)]
        record = wfdb.rdrecord(str(header.with_suffix("")), channel_names=["I"])
        lead_uv = record.p_signal[:, 0] * (1000.0 if record.units[0].lower() == "mv" else 1.0)
        lead_uv = resample_fs(np.nan_to_num(lead_uv), record.fs, FS)
        target = root / header.relative_to(PTBXL).with_suffix(".npy")
        if i >= len(headers):
            target = target.with_name(f"{target.stem}_copy{i // len(headers)}.npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, lead_uv.astype(np.float32))
    return n


# `ecg-dicom convert` with the signal-quality gate (issue 12) stubbed out, its imports included:
# what the gate costs, for the benchmark's attribution only (the product has no switch)
_WITHOUT_GATE = """
import sys, types
class _Ok:
    status = "ok"
    def to_json(self): return None
    def summary(self): return None
stub = types.ModuleType("ecg_dicom.core.quality")
stub.QualityReport, stub.assess_quality = _Ok, lambda signal, fs: _Ok()
stub.assess_quality_many = lambda leads, rates: [_Ok() for _ in leads]
sys.modules["ecg_dicom.core.quality"] = stub
from ecg_dicom.cli import main
sys.exit(main(sys.argv[1:]))
"""


def timed_convert(inputs: Path, out: Path, *args: str, env: dict[str, str] | None = None, gate: bool = True) -> float:
    """Wall seconds of one whole `ecg-dicom convert INPUTS OUT ARGS...` process (interpreter
    start, imports, model load, reading, inference, writing); it must convert everything.
    ``gate=False``: the same with the signal-quality gate stubbed out (see ``_WITHOUT_GATE``)."""
    command = ["-m", "ecg_dicom"] if gate else ["-c", _WITHOUT_GATE]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *command, "convert", str(inputs), str(out), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or "rejected 0" not in proc.stderr:
        raise RuntimeError(f"convert {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def fast_checkpoint(checkpoint: Path, tmp: Path, precision: str = "int8") -> Path:
    """``checkpoint`` if the .onnx beside it is its export at ``precision``, else a copy in
    ``tmp`` with that export beside it."""
    from ecg_dicom.core.runners import OnnxRunner, onnx_path_for
    from ecg_dicom.files import file_sha256

    exported = onnx_path_for(checkpoint)
    if exported.is_file():
        runner = OnnxRunner(exported, threads=1)
        if runner.header.source_sha256 == file_sha256(checkpoint) and runner.header.precision == precision:
            return checkpoint
    from ecg_dicom.core.export import export_onnx

    folder = tmp / f"export-{precision}"
    folder.mkdir()
    copy = Path(shutil.copy(checkpoint, folder / checkpoint.name))
    export_onnx(copy, "I", None, precision)
    return copy


def best_of(runs: int, fn) -> float:
    """The smallest of ``runs`` calls of ``fn()`` (seconds): the least disturbed run."""
    return min(fn() for _ in range(runs))


def seconds_of(fn, *args) -> float:
    """Wall seconds of one call ``fn(*args)``."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def load_average() -> str:
    """The machine's 1-minute load average, as text for the report."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def matmul_limits(threads: int, size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Best-of FLOP/s of a ``size``² matrix product with ``threads`` threads: fp32 and bf16
    (torch, oneDNN/MKL: AVX-512 and AVX512-BF16 where the CPU has them) and int8 (ONNX
    Runtime's MatMulInteger, u8 x s8 -> s32: VNNI where the CPU has it), the kernels the
    fp32, bf16 and int8 paths use."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        torch.mm(a, b)
        rates[name] = 2 * size ** 3 / best_of(repeats, lambda: seconds_of(torch.mm, a, b))
    rates["int8"] = _int8_matmul_rate(threads, size, repeats)
    return rates


def _int8_matmul_rate(threads: int, size: int, repeats: int) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
             "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}
    session.run(None, feeds)
    return 2 * size ** 3 / best_of(repeats, lambda: seconds_of(session.run, None, feeds))
