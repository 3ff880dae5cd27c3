"""Busy-machine benchmark (not a test): `python bench/busy.py [--n 128] [--checkpoint CKPT]`.

A hospital server is rarely idle. This runs one CPU hog per usable core (a busy loop in its
own process, stopped after the benchmark) beside `ecg-dicom convert` of the same N real
inputs and prints, as whole-process wall times measured in the same run:
  1. the default command (the fast path: one single-threaded worker process per core);
  2. the same with `--batch-size 1` and with `--threads 1`;
  3. the exact fp32 path (`--precision fp32`: torch in one process, its threads sleeping
     instead of spin-waiting) with its default threads and with `--threads 1`;
then the ratios: the default must never be slower than `--batch-size 1` nor `--threads 1`
(ratio >= 1.0). The same commands without the hogs give the idle reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import best_of, load_average, make_archive, timed_convert  # noqa: E402

from ecg_dicom.core.runners import usable_cpus  # noqa: E402

HOG_LIMIT_S = 1800.0  # a hog stops by itself after this long, whatever happens to the benchmark


def hog(stop: multiprocessing.Event) -> None:
    """Keep one core busy (pure Python arithmetic) until ``stop`` is set or the limit passes."""
    end = time.monotonic() + HOG_LIMIT_S
    x = 0
    while not stop.is_set() and time.monotonic() < end:
        for i in range(100_000):
            x = (x + i * i) % 1_000_003


class Hogs:
    """One :func:`hog` process per core for the duration of a ``with`` block."""

    def __init__(self, count: int) -> None:
        self.stop = multiprocessing.Event()
        self.procs = [multiprocessing.Process(target=hog, args=(self.stop,), daemon=True) for _ in range(count)]

    def __enter__(self) -> "Hogs":
        for p in self.procs:
            p.start()
        time.sleep(1.0)  # let them reach full speed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="inputs per command (default 128)")
    parser.add_argument("--runs", type=int, default=2, help="runs per command, best taken (default 2)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint with its .onnx beside it (default: shipped)")
    parser.add_argument("--hogs", type=int, default=usable_cpus(), help="CPU hogs (default: one per usable core)")
    parser.add_argument("--no-fp32", action="store_true", help="leave out the exact fp32 commands")
    args = parser.parse_args()
    ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    variants = {"default": [], "--batch-size 1": ["--batch-size", "1"], "--threads 1": ["--threads", "1"]}
    if not args.no_fp32:
        variants |= {"--precision fp32": ["--precision", "fp32"],
                     "--precision fp32 --threads 1": ["--precision", "fp32", "--threads", "1"]}
    with tempfile.TemporaryDirectory(prefix="ecg-bench-busy-") as tmp_name:
        tmp = Path(tmp_name)
        make_archive(tmp / "in", args.n, only_500hz=True)
        counter = iter(range(10_000))
        times: dict[str, dict[str, float]] = {"idle": {}, "busy": {}}
        for state in ("idle", "busy"):
            load = load_average()
            with Hogs(args.hogs if state == "busy" else 0):
                timed_convert(tmp / "in", tmp / f"out{next(counter)}", *ckpt)  # warm-up: caches, the hogs' start
                for name, extra in variants.items():
                    times[state][name] = best_of(args.runs, lambda: timed_convert(
                        tmp / "in", tmp / f"out{next(counter)}", *ckpt, *extra))
            print(f"{state} ({args.hogs if state == 'busy' else 0} hogs; load average before: {load}):")
            for name, seconds in times[state].items():
                print(f"  convert {name:30s}: {seconds:7.2f} s = {args.n / seconds:7.1f} ECG/s")
        busy = times["busy"]
        print(f"RATIO on the busy machine: default vs --batch-size 1 = {busy['--batch-size 1'] / busy['default']:.2f}x,"
              f" vs --threads 1 = {busy['--threads 1'] / busy['default']:.2f}x faster (target >= 1.0 each)")
        if not args.no_fp32:
            print(f"RATIO fp32 path, busy: default threads vs --threads 1 ="
                  f" {busy['--precision fp32 --threads 1'] / busy['--precision fp32']:.2f}x (>= 1.0: no collapse)")
        print(f"slowdown from the hogs: default {busy['default'] / times['idle']['default']:.2f}x")


if __name__ == "__main__":
    main()
