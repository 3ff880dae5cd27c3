"""Signal-quality gate on real records and on the same records with faults injected (not a test).

    python bench/quality.py [--data ../shared/data] [--limit N] [--json FILE]

Prints, for lead I of every real 12-lead record under ``<data>/ecg12`` (the lead as
recorded, no filtering): how many the gate rejects (false rejects), warns, and which flags;
then for the same records with one injected fault each (a seeded generator, so the table
is reproducible) how many are flagged (warn or reject); then what each real single-lead
recording under ``<data>/single_lead`` gets. Faults and their sizes:

* flat: a 1–3 s stretch held at one value (a data drop-out; half held at the last sample,
  half at 0 µV);
* clipping: an ADC rail cuts the dominant deflection at 50–85 % of its height above the
  median (R peaks lose 15–50 %; on a ±2.5 mV-class front end with an electrode offset);
* lead-off: a step of ±1–5 mV, then only amplifier noise (5 µV RMS) decaying back with the
  3.2 s time constant of a 0.05 Hz AC coupling, for 2–5 s or to the end;
* EMG: band-limited Gaussian noise (20–150 Hz) at an SNR of 0–12 dB against the QRS
  (MIT-BIH Noise Stress Test convention, S = QRS p-p² / 8);
* mains: a 50 or 60 Hz sine of 0.1–0.5 mV peak-to-peak (records sampled at >= 200 Hz:
  PTB-XL's 100 Hz copies are band-limited to 50 Hz and cannot carry it);
* baseline wander: a 0.1–0.5 Hz sine of 2–5 mV peak-to-peak (not asked by the issue).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from scipy import signal as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecg_dicom.core.preprocess import check_single_lead  # noqa: E402
from ecg_dicom.core.quality import assess_quality  # noqa: E402
from ecg_dicom.errors import InputError  # noqa: E402

FAULTS = ("flat", "clipping", "lead_off", "emg", "mains", "wander")


def qrs_pp(x: np.ndarray, fs: float) -> float:
    """The QRS peak-to-peak, estimated without the gate: median p-p of 1 s windows."""
    w = int(fs)
    return float(np.median([np.ptp(x[i:i + w]) for i in range(0, x.size - w + 1, w)]))


def inject(fault: str, x: np.ndarray, fs: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A copy of ``x`` (µV) with ``fault``; returns it and a short description of its size."""
    y = x.astype(np.float64).copy()
    n = y.size
    t = np.arange(n) / fs
    if fault == "flat":
        length = int(rng.uniform(1.0, 3.0) * fs)
        start = int(rng.integers(0, n - length))
        y[start:start + length] = y[start] if rng.random() < 0.5 else 0.0
        return y, f"{length / fs:.1f} s"
    if fault == "clipping":
        med = np.median(y)
        up, down = y.max() - med, med - y.min()
        frac = rng.uniform(0.5, 0.85)
        if up >= down:
            y = np.minimum(y, med + frac * up)
        else:
            y = np.maximum(y, med - frac * down)
        return y, f"rail at {frac:.0%}"
    if fault == "lead_off":
        start = int(rng.uniform(1.0, 0.6 * n / fs) * fs)
        off = int(rng.uniform(2.0, 5.0) * fs) if rng.random() < 0.5 else n - start
        stop = min(n, start + off)
        step = rng.choice([-1, 1]) * rng.uniform(1000.0, 5000.0)
        tt = np.arange(stop - start) / fs
        y[start:stop] = y[start] + step * np.exp(-tt / 3.2) + rng.normal(0, 5.0, stop - start)
        return y, f"step {step / 1000:+.1f} mV for {(stop - start) / fs:.1f} s"
    if fault == "emg":
        snr = rng.uniform(0.0, 12.0)
        hi = min(150.0, 0.45 * fs)
        sos = sps.butter(4, [20.0, hi], btype="bandpass", fs=fs, output="sos")
        noise = sps.sosfiltfilt(sos, rng.normal(0, 1, n))
        target = np.sqrt(qrs_pp(x, fs) ** 2 / 8 / 10 ** (snr / 10))
        return y + noise / noise.std() * target, f"SNR {snr:.1f} dB"
    if fault == "mains":
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        pp = rng.uniform(100.0, 500.0)
        return y + pp / 2 * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)), f"{pp:.0f} µV p-p at {f0:g} Hz"
    if fault == "wander":
        f = rng.uniform(0.1, 0.5)
        pp = rng.uniform(2000.0, 5000.0)
        return y + pp / 2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)), f"{pp / 1000:.1f} mV at {f:.2f} Hz"
    raise ValueError(fault)


def load_lead_i(data: Path, limit: int | None) -> list[tuple[str, str, float, np.ndarray]]:
    """(database, record, fs, lead I µV) of every 12-lead record under data/ecg12."""
    from ecg_dicom.training.data import find_headers, read_wfdb_record

    out = []
    for header in find_headers([data / "ecg12"])[:limit]:
        rec = read_wfdb_record(header)
        out.append((rec.database, rec.name, rec.fs, rec.leads[0]))
    return out


def single_lead_recordings(data: Path) -> list[tuple[str, float, np.ndarray, str]]:
    """(name, fs, first channel in µV, units) of each real single-lead recording."""
    import wfdb
    from scipy.io import loadmat

    base = data / "single_lead"
    out = []
    for mat in sorted((base / "challenge2017_alivecor").glob("*.mat")):
        out.append((f"AliveCor {mat.stem}", 300.0, loadmat(mat)["val"][0].astype(float), "uV"))
    for rec in ("mitdb/100", "afpdb/n26c", "macecgdb/test01_00s", *(f"cpsc2021/{p.stem}" for p in
                                                                     sorted((base / "cpsc2021").glob("*.hea")))):
        r = wfdb.rdrecord(str(base / rec))
        out.append((rec, float(r.fs), r.p_signal[:, 0] * 1000.0, "uV"))
    raw = np.loadtxt(base / "biosppy" / "ecg.txt")
    out.append(("biosppy/ecg.txt (raw ADC counts)", 1000.0, raw, "uV"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=None, help="first N records only (a quick look)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every record's measures here")
    args = parser.parse_args(argv)
    data = Path(args.data)
    t0 = time.perf_counter()
    records = load_lead_i(data, args.limit)
    rng = np.random.default_rng(args.seed)

    clean = defaultdict(Counter)
    flags_clean = Counter()
    detail = []
    faulty = defaultdict(Counter)
    missed = defaultdict(list)
    for database, name, fs, lead in records:
        rep = assess_quality(lead, fs)
        clean[database][rep.status] += 1
        clean["all"][rep.status] += 1
        for f in rep.flags:
            flags_clean[f"{f.code}:{f.severity}"] += 1
        detail.append({"record": name, "status": rep.status, "measures": rep.measures,
                       "flags": [f.text for f in rep.flags]})
        for fault in FAULTS:
            if fault == "mains" and fs < 200:
                continue
            bad, size = inject(fault, lead, fs, rng)
            try:
                check_single_lead(bad, fs)
            except InputError:
                faulty[fault]["refused by the amplitude checks"] += 1
                faulty[fault]["n"] += 1
                continue
            rep = assess_quality(bad, fs)
            faulty[fault]["n"] += 1
            faulty[fault][rep.status] += 1
            if rep.status == "ok":
                missed[fault].append(f"{name} ({size})")

    print(f"\nLead I of {len(records)} real 12-lead records, as recorded ({time.perf_counter() - t0:.0f} s)\n")
    print("| database | records | rejected (false rejects) | warned | ok |")
    print("|---|---|---|---|---|")
    for db in sorted(clean, key=lambda d: (d == "all", d)):
        c = clean[db]
        total = sum(c.values())
        print(f"| {db} | {total} | {c['reject']} ({100 * c['reject'] / total:.2f} %) |"
              f" {c['warn']} ({100 * c['warn'] / total:.1f} %) | {c['ok']} |")
    print("\nflags raised on the real records:", ", ".join(f"{k} {v}" for k, v in sorted(flags_clean.items())) or "none")

    print("\n| injected fault | records | flagged (warn or reject) | rejected | warned | missed |")
    print("|---|---|---|---|---|---|")
    for fault in FAULTS:
        c = faulty[fault]
        n = c["n"]
        flagged = c["warn"] + c["reject"] + c["refused by the amplitude checks"]
        extra = f" (+{c['refused by the amplitude checks']} refused by the amplitude checks)" \
            if c["refused by the amplitude checks"] else ""
        print(f"| {fault} | {n} | {flagged} ({100 * flagged / max(n, 1):.1f} %){extra} | {c['reject']} |"
              f" {c['warn']} | {c['ok']} |")
    for fault, names in missed.items():
        print(f"  missed {fault}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")

    print("\n| single-lead recording | fs | outcome | flags / reason |")
    print("|---|---|---|---|")
    for name, fs, x, units in single_lead_recordings(data):
        try:
            lead = check_single_lead(x, fs, units)
        except InputError as exc:
            print(f"| {name} | {fs:g} | refused by the amplitude checks | {exc} |")
            continue
        rep = assess_quality(lead, fs)
        text = "; ".join(f.text for f in rep.flags) or "-"
        hr = rep.measures.get("heart_rate_bpm")
        print(f"| {name} | {fs:g} | {rep.status} | {text} (HR {hr} bpm, SNR {rep.measures.get('snr_db')} dB) |")
    if args.json:
        Path(args.json).write_text(json.dumps(detail, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
