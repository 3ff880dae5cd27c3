"""Inference benchmark (not a test): `python bench/inference.py [--n 256] [--checkpoint CKPT]`.

On N real one-lead inputs (lead I of PTB-XL 500 Hz records: 10 s at 500 Hz, .npy in µV),
in one run on this machine, side by side in ECG/s:
  1. the seed-style loop: one file at a time, one torch fp32 forward pass of batch 1 per
     model window (model loaded, in this process);
  2. batched fp32: a whole `ecg-dicom convert --precision fp32` process (interpreter
     start, imports, model load, reading, inference and writing included);
  3. the optimized path: a whole `ecg-dicom convert` process with its defaults
     (target >= 200 ECG/s for 256 inputs on the 2-core CPU), also per measured fp32 GFLOP/s;
then the model's FLOPs per ECG, the machine's measured matmul limits (2048² fp32 and
bf16 in torch, int8 in ONNX Runtime) and the fraction of each that the model-only rates
achieve, and what each lever gave on its own (runtime and precision, threads, imports,
one sync per batch instead of an fsync per file).
CKPT without an .onnx beside it (a candidate model) is exported to a temporary folder
first. Figures depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import (  # noqa: E402
    FS,
    best_of,
    fast_checkpoint,
    load_average,
    make_archive,
    matmul_limits,
    seconds_of,
    timed_convert,
)

from ecg_dicom.convert.batch import FILES_PER_BATCH  # noqa: E402
from ecg_dicom.core.checkpoint import shipped_checkpoint_path  # noqa: E402
from ecg_dicom.core.inference import Reconstructor  # noqa: E402
from ecg_dicom.core.preprocess import model_features  # noqa: E402
from ecg_dicom.core.runners import OnnxRunner, onnx_path_for, usable_cpus  # noqa: E402
from ecg_dicom.files import deferred_sync, sync_filesystem, write_npy_atomic  # noqa: E402


def seed_style_rate(checkpoint: Path, files: list[Path], out: Path) -> float:
    """ECG/s of the seed's way: one file at a time, one forward pass (batch 1) per model
    window, torch fp32, the same windows and stitching as ``convert``."""
    seed_style = Reconstructor.from_checkpoint(checkpoint, "I", batch_size=1, precision="fp32")
    seed_style.reconstruct(np.load(files[0]), 500.0)  # warm-up
    t0 = time.perf_counter()
    for path in files:
        np.save(out / path.name, seed_style.reconstruct(np.load(path), 500.0))
    return len(files) / (time.perf_counter() - t0)


def window_features(reconstructor: Reconstructor, files: list[Path]) -> np.ndarray:
    """(W, 2, L) model features of every window of ``files``, as ``convert`` cuts them."""
    from ecg_dicom.core.inference import window_starts
    from ecg_dicom.core.preprocess import highpass, resample_fs

    pre = reconstructor.checkpoint.preprocessing
    windows = []
    for path in files:
        x = resample_fs(np.load(path).astype(np.float64), 500.0, pre.fs)
        if pre.highpass_hz:
            x = highpass(x, pre.fs, pre.highpass_hz)
        x = np.pad(x, (0, max(0, pre.window - x.size)), mode="edge")
        windows += [x[s:s + pre.window] for s in window_starts(x.size, pre.window, pre.hop)]
    return model_features(np.stack(windows))


def model_rate(predict, features: np.ndarray, repeats: int = 3) -> float:
    """Windows/s of bare forward passes over ``features`` (best of ``repeats``)."""
    predict(features[:8])
    return len(features) / best_of(repeats, lambda: seconds_of(predict, features))


def gate_cpu_ms(files: list[Path], batch: int = FILES_PER_BATCH, repeats: int = 3) -> tuple[float, float]:
    """CPU ms per ECG of the signal-quality gate alone on ``files`` (best of ``repeats``): in
    ``convert``'s batches (assess_quality_many) and one lead at a time (assess_quality, as
    ``serve`` runs it)."""
    from ecg_dicom.core.quality import assess_quality, assess_quality_many

    leads = [np.load(f).astype(np.float64) for f in files]
    fs = [FS] * len(leads)

    def cpu(fn) -> float:
        t0 = time.process_time()
        fn()
        return time.process_time() - t0

    batched = best_of(repeats, lambda: cpu(lambda: [assess_quality_many(leads[i:i + batch], fs[i:i + batch])
                                                    for i in range(0, len(leads), batch)]))
    single = best_of(repeats, lambda: cpu(lambda: [assess_quality(x, FS) for x in leads]))
    return 1000 * batched / len(leads), 1000 * single / len(leads)


def torch_model_rates(checkpoint: Path, features: np.ndarray, threads: int) -> dict[str, float]:
    """Windows/s of the checkpoint's torch model in fp32 and under bf16 autocast."""
    import torch

    torch.set_num_threads(threads)
    model = Reconstructor.from_checkpoint(checkpoint, "I", precision="fp32").model

    def run(x: np.ndarray, bf16: bool = False) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(x), 64):
                model(torch.from_numpy(x[i:i + 64]))

    return {"torch fp32": model_rate(run, features), "torch bf16": model_rate(lambda x: run(x, True), features)}


def import_seconds(module: str, repeats: int = 3) -> float:
    """Best-of seconds for a fresh interpreter to import ``module`` (minus a bare interpreter)."""
    def once(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0
    return best_of(repeats, lambda: once(f"import {module}")) - best_of(repeats, lambda: once("pass"))


def write_seconds(folder: Path, n: int, deferred: bool) -> float:
    """Seconds to write ``n`` (12, 5000) float32 results atomically: an fsync per file and
    folder, or none and one sync at the end (``convert``'s way)."""
    folder.mkdir(parents=True, exist_ok=True)
    result = np.zeros((12, 5000), np.float32)
    t0 = time.perf_counter()
    if deferred:
        with deferred_sync():
            for i in range(n):
                write_npy_atomic(folder / f"{i}.npy", result)
            sync_filesystem(folder)
    else:
        for i in range(n):
            write_npy_atomic(folder / f"{i}.npy", result)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="inputs converted by each whole process (default 256)")
    parser.add_argument("--seed-n", type=int, default=64, help="inputs of the seed-style loop (default 64)")
    parser.add_argument("--runs", type=int, default=2, help="whole-process runs per variant, best taken")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: the shipped lead-I one)")
    parser.add_argument("--quick", action="store_true", help="leave out the levers (only 1-3 and the limits)")
    args = parser.parse_args()
    cpus = usable_cpus()
    checkpoint = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint_path("I")
    print(f"load average at start: {load_average()}; {cpus} usable CPUs")

    with tempfile.TemporaryDirectory(prefix="ecg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        make_archive(tmp / "in", args.n, only_500hz=True)
        files = sorted((tmp / "in").rglob("*.npy"))
        fast_ckpt = fast_checkpoint(checkpoint, tmp)
        ckpt_args = ["--checkpoint", str(fast_ckpt)]
        out_seed = tmp / "seed"
        out_seed.mkdir()
        seed = seed_style_rate(checkpoint, files[:args.seed_n], out_seed)
        counter = iter(range(1000))
        fp32 = args.n / best_of(args.runs, lambda: timed_convert(tmp / "in", tmp / f"o{next(counter)}",
                                                               *ckpt_args, "--precision", "fp32"))
        # with and without the gate alternately, so that both see the same load
        gated, ungated = [], []
        for _ in range(args.runs):
            gated.append(timed_convert(tmp / "in", tmp / f"o{next(counter)}", *ckpt_args))
            ungated.append(timed_convert(tmp / "in", tmp / f"o{next(counter)}", *ckpt_args, gate=False))
        fast, no_gate = args.n / min(gated), args.n / min(ungated)
        load_fast = load_average()

        reconstructor = Reconstructor.from_checkpoint(fast_ckpt, "I", precision="fast")
        pre = reconstructor.checkpoint.preprocessing
        flops = reconstructor.flops_per_record(10.0)
        features = window_features(reconstructor, files)
        windows_per_ecg = len(features) / len(files)
        limits = matmul_limits(cpus)
        runner = OnnxRunner(onnx_path_for(fast_ckpt), threads=cpus)
        ort_int8 = model_rate(runner.predict, features) / windows_per_ecg
        gate_batched_ms, gate_single_ms = gate_cpu_ms(files)

        print(f"\ncheckpoint {checkpoint} ({reconstructor.model_version}): window {pre.window} at {pre.fs:g} Hz,"
              f" hop {pre.hop}, {windows_per_ecg:g} windows per 10 s ECG; fast path: {reconstructor.precision}")
        print(f"inputs: {args.n} x lead I of PTB-XL 500 Hz records (10 s), .npy µV; whole processes best of {args.runs}")
        print(f"  1. seed-style loop (torch fp32, batch 1)      : {seed:8.1f} ECG/s  ({args.seed_n} inputs, in-process)")
        print(f"  2. batched fp32 (`convert --precision fp32`)  : {fp32:8.1f} ECG/s  (whole process)")
        print(f"  3. optimized (`convert`, the default)         : {fast:8.1f} ECG/s  (whole process; target >= 200)")
        print(f"     (the same with the signal-quality gate stubbed out, runs alternating: {no_gate:.1f} ECG/s;"
              f" with / without = {fast / no_gate:.2f}x, the gate {1000 * (1 / fast - 1 / no_gate):+.2f} ms"
              f" wall per ECG)")
        print(f"     (the gate alone: {gate_batched_ms:.2f} ms CPU per ECG in convert's batches of {FILES_PER_BATCH},"
              f" {gate_single_ms:.2f} ms one lead at a time as serve runs it)")
        print(f"  RATIOS: optimized / seed-style = {fast / seed:.1f}x, optimized / batched fp32 = {fast / fp32:.1f}x,"
              f" batched fp32 / seed-style = {fp32 / seed:.2f}x")
        print(f"  FLOPs per 10 s ECG = {flops / 1e6:.0f} MFLOP")
        print(f"  matmul limits ({cpus} threads, 2048²): fp32 {limits['fp32'] / 1e9:.0f}, bf16 {limits['bf16'] / 1e9:.0f},"
              f" int8 {limits['int8'] / 1e9:.0f} GFLOP/s (GOP/s for int8)")
        print(f"  optimized end to end: {fast / (limits['fp32'] / 1e9):.2f} ECG/s per fp32 GFLOP/s;"
              f" achieves {fast * flops / limits['fp32']:.1%} of the fp32 and {fast * flops / limits['int8']:.1%}"
              f" of the int8 limit")
        print(f"  model only ({reconstructor.precision}, {cpus} threads): {ort_int8:.1f} ECG/s ="
              f" {ort_int8 * flops / limits['fp32']:.1%} of fp32, {ort_int8 * flops / limits['int8']:.1%} of int8"
              f" limit")
        if args.quick:
            return

        print("\nlevers, each on its own (model-only rates in ECG/s, same windows):")
        rates = torch_model_rates(checkpoint, features, cpus)
        fp32_graph = fast_checkpoint(checkpoint, tmp, "fp32")
        rates["onnxruntime fp32"] = model_rate(OnnxRunner(onnx_path_for(fp32_graph), threads=cpus).predict, features)
        rates["onnxruntime int8"] = ort_int8 * windows_per_ecg
        rates["onnxruntime int8, 1 thread"] = model_rate(OnnxRunner(onnx_path_for(fast_ckpt), threads=1).predict,
                                                         features)
        for name, rate in rates.items():
            limit = limits["bf16" if "bf16" in name else "int8" if "int8" in name else "fp32"]
            print(f"  {name:28s}: {rate / windows_per_ecg:8.1f} ECG/s ({rate * flops / windows_per_ecg / limit:.1%}"
                  f" of its {'bf16' if 'bf16' in name else 'int8' if 'int8' in name else 'fp32'} matmul limit)")
        t_torch, t_ort = import_seconds("torch"), import_seconds("onnxruntime")
        t_scipy = import_seconds("scipy.signal")
        print(f"  import: torch {t_torch:.2f} s, onnxruntime {t_ort:.2f} s, scipy.signal {t_scipy:.2f} s"
              f" (a 256-ECG run at 200 ECG/s lasts 1.28 s)")
        each, batch = write_seconds(tmp / "w-each", args.n, False), write_seconds(tmp / "w-batch", args.n, True)
        print(f"  writing {args.n} results: fsync per file {each:.2f} s, one sync per batch {batch:.2f} s")
        one = args.n / best_of(args.runs, lambda: timed_convert(tmp / "in", tmp / f"o{next(counter)}", *ckpt_args,
                                                              "--threads", "1"))
        print(f"  `convert --threads 1`: {one:.1f} ECG/s (default {cpus} threads: {fast:.1f})")
    print(f"load average at the end: {load_average()} (during the optimized runs: {load_fast})")


if __name__ == "__main__":
    main()
