"""Inference benchmark (not a test): run `python bench/inference.py [--n 64]`.

Measures in one run on this CPU:
  1. ECGs/s of the seed-style loop (one file at a time, one forward pass of batch 1 per
     model window) vs batched `convert_folder`, as a ratio (target >= 10x);
  2. the model's FLOPs per 10 s ECG against the machine's measured float32 matmul rate,
     as the achieved fraction of that limit (target >= 70 %).
Uses the shipped lead-I checkpoint when present, else the default config, randomly initialised.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecg_dicom.convert import convert_folder  # noqa: E402
from ecg_dicom.core.checkpoint import (  # noqa: E402
    Checkpoint,
    Preprocessing,
    load_checkpoint,
    shipped_checkpoint_path,
)
from ecg_dicom.core.inference import Reconstructor, window_starts  # noqa: E402
from ecg_dicom.core.model import BiLSTMAttentionModel, ModelConfig  # noqa: E402
from ecg_dicom.leads import learned_leads  # noqa: E402


def model_flops(model: torch.nn.Module, length: int) -> float:
    """FLOPs (2 per multiply-add) of one forward pass over a window of ``length`` samples:
    the model's own count (:meth:`BiLSTMAttentionModel.flops`), which follows its config."""
    return float(model.flops(length))


def matmul_rate(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """Best-of float32 matmul FLOP/s with ``threads`` threads (the machine's practical limit)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def seed_style_loop(reconstructor: Reconstructor, files: list[Path], out: Path) -> float:
    """The seed's way: one file at a time, one forward pass (batch 1) per model window,
    the same windows and stitching as ``convert``; returns seconds."""
    seed_style = Reconstructor(reconstructor.checkpoint, batch_size=1)
    t0 = time.perf_counter()
    for path in files:
        np.save(out / path.name, seed_style.reconstruct(np.load(path), 500.0))
    return time.perf_counter() - t0


def model_only_rate(model: torch.nn.Module, window: int, batch: int, repeats: int = 3) -> float:
    """Windows/s of bare forward passes at ``batch`` (no I/O, no pre/post-processing)."""
    x = torch.randn(batch, model.config.in_features, window)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64, help="ECGs per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (use 1 on a machine shared with other work)")
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)

    if shipped_checkpoint_path("I").exists():
        checkpoint = load_checkpoint(None, "I")
        source = "shipped lead-I checkpoint"
    else:
        checkpoint = Checkpoint(BiLSTMAttentionModel(ModelConfig()).eval(), "I", learned_leads("I"),
                                "random", Preprocessing())
        source = "default config, random weights (no shipped checkpoint yet)"
    reconstructor = Reconstructor(checkpoint, batch_size=args.batch_size)
    pre = checkpoint.preprocessing

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        inp, out_seed, out_batch = Path(tmp, "in"), Path(tmp, "seed"), Path(tmp, "batch")
        for d in (inp, out_seed, out_batch):
            d.mkdir()
        t = np.arange(5000) / 500
        for i in range(args.n):
            lead = 800 * np.sin(2 * np.pi * 1.2 * t) ** 15 + rng.normal(0, 20, t.size)
            np.save(inp / f"{i:04d}.npy", lead.astype(np.float32))
        files = sorted(inp.iterdir())
        seed_style_loop(reconstructor, files[:2], out_seed)  # warm-up
        t_seed = seed_style_loop(reconstructor, files, out_seed)
        # warm-up; the timed run writes elsewhere (convert skips inputs whose results are done)
        convert_folder(inp, out_batch / "warm-up", reconstructor, batch_size=args.batch_size)
        t0 = time.perf_counter()
        convert_folder(inp, out_batch / "timed", reconstructor, batch_size=args.batch_size)
        t_batch = time.perf_counter() - t0

    n_windows = len(window_starts(int(10 * pre.fs), pre.window, pre.hop))
    members = getattr(checkpoint.model, "members", [checkpoint.model])  # an ensemble runs each member
    flops = sum(model_flops(m, pre.window) for m in members) * n_windows
    peak = matmul_rate(threads)
    seed_rate, batch_rate = args.n / t_seed, args.n / t_batch
    model_rate = model_only_rate(checkpoint.model, pre.window, args.batch_size) / n_windows
    achieved = flops * batch_rate
    print(f"model: {source} ({len(members)} member(s)); window {pre.window} samples at {pre.fs:g} Hz; torch threads {threads}")
    print(f"seed-style loop : {seed_rate:8.1f} ECG/s")
    print(f"batched convert : {batch_rate:8.1f} ECG/s (batch {args.batch_size}, incl. file I/O and checks)")
    print(f"RATIO batched / seed-style = {batch_rate / seed_rate:.2f}x (target >= 10x)")
    print(f"model FLOPs per 10 s ECG   = {flops / 1e6:.1f} MFLOP ({n_windows} windows)")
    print(f"matmul limit (fp32 mm 1024)= {peak / 1e9:.1f} GFLOP/s")
    print(f"achieved in batched convert= {achieved / 1e9:.2f} GFLOP/s")
    print(f"RATIO achieved / matmul limit = {achieved / peak:.1%} (target >= 70%)")
    print(f"model forward passes only  = {model_rate:8.1f} ECG/s, {flops * model_rate / peak:.1%} of the matmul limit")


if __name__ == "__main__":
    main()
