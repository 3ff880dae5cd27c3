"""Render time of the 12-lead PDF page, now and as of an earlier commit, in one run (not a test).

    python bench/page.py [--before REV] [--runs N] [--out DIR]

The real cart's ECG (Mortara ELI 250, 1000 Hz, 10 s) reconstructed from lead I by the
shipped model (its int8 ONNX export), then ``render(data, "pdf", "A4")`` timed ``--runs``
times, alternating between this tree's ``ecg_dicom/report/page.py`` and the same file as of
``--before`` (default ``edf51f6``, before the core-font change; ``none`` to skip), loaded
from git into its own module so both run in the same process on the same data. Prints the
median and the spread of each and the PDF sizes; ``--out`` writes both PDFs there to look at.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import fast_checkpoint, load_average  # noqa: E402

ECG = REPO.parent / "shared" / "data" / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"


def page_module_at(rev: str):
    """``ecg_dicom/report/page.py`` as of git revision ``rev``, as its own module."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:ecg_dicom/report/page.py"], capture_output=True,
                            text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"page_at_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"page.py@{rev}", "exec"), module.__dict__)
    return module


def report_data(tmp: Path):
    """The page's data for the Mortara record reconstructed from lead I by the shipped model."""
    from ecg_dicom.core.checkpoint import shipped_checkpoint_path
    from ecg_dicom.core.inference import Reconstructor
    from ecg_dicom.inputs import NPY_DEFAULT_FS, load_input
    from ecg_dicom.outputs.results import result_accuracy, result_metadata
    from ecg_dicom.report import report_data_from_metadata

    rec = Reconstructor.from_checkpoint(fast_checkpoint(shipped_checkpoint_path("I"), tmp), input_lead="I", threads=1)
    inp = load_input(ECG, "I", NPY_DEFAULT_FS, "uV", None, models=("I",))
    result = rec.reconstruct_isolated([inp.signal_uv], [inp.fs])[0]
    meta = result_metadata(inp, result, rec, result_accuracy(inp, result, rec))
    return report_data_from_metadata(result.leads, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="edf51f6", help="git revision to compare with, or 'none'")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, help="write now.pdf and before.pdf here")
    args = parser.parse_args()

    from ecg_dicom.report import page

    with tempfile.TemporaryDirectory() as tmp:
        data = report_data(Path(tmp))
    variants = {"now": page}
    if args.before != "none":
        variants[f"before ({args.before})"] = page_module_at(args.before)
    times: dict[str, list[float]] = {name: [] for name in variants}
    pdfs = {name: module.render(data, "pdf", "A4") for name, module in variants.items()}  # warm-up: imports, fonts
    for _ in range(args.runs):  # alternating, so a busy spell on the shared machine hits both
        for name, module in variants.items():
            t0 = time.perf_counter()
            module.render(data, "pdf", "A4")
            times[name].append(1000 * (time.perf_counter() - t0))
    print(f"render(data, 'pdf', 'A4'), {args.runs} runs each, load average {load_average()}")
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4)
        print(f"  {name:<20} median {statistics.median(ts):6.1f} ms  (quartiles {q1:.1f}-{q3:.1f} ms)"
              f"  PDF {len(pdfs[name]) / 1000:.1f} kB")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, pdf in pdfs.items():
            (args.out / f"{name.split()[0]}.pdf").write_bytes(pdf)


if __name__ == "__main__":
    main()
