"""Archive benchmark (not a test): run `python bench/convert_ray.py [--n 1000] [--workers N]`.

Measures in one run on this machine, on the same N inputs (lead I of real PTB-XL records,
laid out as PTB-XL lays them out; the 100 Hz records brought to 500 Hz with the product's
own linear resampling, so that one --fs fits all), with the shipped lead-I checkpoint:
  1. ECG/s of the single engine (`convert_folder` on the fast path: one single-threaded
     worker process per core) vs `--engine ray` (a local Ray instance, one single-threaded worker per core),
     as the Ray engine's overhead (target <= 15 %); both for the conversion alone and end to
     end (Ray's start-up and each worker's model load included; the single engine's model
     load included);
  2. the per-core rate: a Ray worker's ECG/s vs the single engine's in one process on one thread
     (Ray's own overhead per core; the figure the README's cluster estimate uses);
  3. that both engines wrote the same results (.npy within 0.5 µV).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import make_archive  # noqa: E402

from ecg_dicom.convert.batch import ConvertSettings, convert_folder  # noqa: E402
from ecg_dicom.convert.ray_engine import convert_archive, local_cpus, ray_session  # noqa: E402
from ecg_dicom.core.inference import Reconstructor  # noqa: E402


def max_difference(a: Path, b: Path) -> tuple[int, float]:
    """(files compared, largest |a - b| in µV) over the .npy results under ``a``."""
    worst, count = 0.0, 0
    for path in a.rglob("*.npy"):
        other = b / path.relative_to(a)
        worst = max(worst, float(np.abs(np.load(path) - np.load(other)).max()))
        count += 1
    return count, worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="inputs in the archive")
    parser.add_argument("--workers", type=int, default=local_cpus(), help="Ray workers (one core each)")
    parser.add_argument("--threads", type=int, default=local_cpus(),
                        help="worker processes (one thread each) of the single engine")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="inputs per batch and windows per forward pass (both engines)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ecg-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_archive(root / "in", args.n)
        print(f"archive: {args.n} inputs (lead I of PTB-XL records, 10 s at 500 Hz) written in "
              f"{time.perf_counter() - t0:.1f} s")

        # both engines on the default (fast) path: the single engine's worker processes, and
        # the same engine in one process on one thread (the per-core baseline of a Ray worker)
        t0 = time.perf_counter()
        reconstructor = Reconstructor.from_checkpoint(None, "I", batch_size=args.batch_size, precision="fast",
                                                      threads=1)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = convert_folder(root / "in", root / "single", reconstructor, batch_size=args.batch_size,
                                workers=args.threads)
        t_single = time.perf_counter() - t0
        t0 = time.perf_counter()
        convert_folder(root / "in", root / "single-1", reconstructor, batch_size=args.batch_size)
        t_single_1 = time.perf_counter() - t0

        t0 = time.perf_counter()
        with ray_session(temp_dir=None, num_cpus=args.workers):
            t_start = time.perf_counter() - t0
            t1 = time.perf_counter()
            report = convert_archive(root / "in", root / "ray", ConvertSettings(), None,
                                     batch_size=args.batch_size, num_workers=args.workers,
                                     files_per_batch=args.batch_size)
            t_ray = time.perf_counter() - t1
        compared, worst = max_difference(root / "single", root / "ray")

    n_ok = len(single.written)
    if len(report.written) != n_ok or report.failed != single.failed:
        raise SystemExit(f"engines disagree: {n_ok} vs {len(report.written)} converted")
    rate_single, rate_single_e2e = n_ok / t_single, n_ok / (t_single + t_load)
    rate_ray, rate_ray_e2e = n_ok / t_ray, n_ok / (t_ray + t_start)
    print(f"converted {n_ok}, rejected {len(single.failed)} (by both engines)")
    print(f"single engine   : {rate_single:7.2f} ECG/s ({args.threads} worker processes x 1 thread;"
          f" model load {t_load:.1f} s)")
    print(f"--engine ray    : {rate_ray:7.2f} ECG/s ({args.workers} workers x 1 thread, incl. their start-up;"
          f" Ray start {t_start:.1f} s)")
    print(f"per core        : {rate_ray / args.workers:7.2f} ECG/s per Ray worker vs {n_ok / t_single_1:.2f} ECG/s"
          " for the single engine in one process, 1 thread")
    print(f"OVERHEAD ray vs single, conversion = {1 - rate_ray / rate_single:+.1%} (target <= 15%)")
    print(f"OVERHEAD ray vs single, end to end = {1 - rate_ray_e2e / rate_single_e2e:+.1%} (target <= 15%)")
    per_core = 1 - rate_ray / args.workers / (n_ok / t_single_1)
    print(f"OVERHEAD per core (a Ray worker vs the 1-thread single engine) = {per_core:+.1%}")
    print(f"results agree: {compared} .npy files, largest difference {worst:.4f} µV (limit 0.5)")
    print(f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
