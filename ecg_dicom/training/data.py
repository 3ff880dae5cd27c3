"""Real 12-lead records (WFDB, .npy) and deepfake-ecg synthetic records, in µV.

Every loader returns :class:`Record` objects holding all 12 leads in
:data:`ecg_dicom.leads.LEADS_12` order, in µV, at the record's own sampling rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ecg_dicom.leads import CHEST_LEADS, LEADS_12, assemble_12_leads, canonical_lead_name

log = logging.getLogger(__name__)

UNIT_SCALE_TO_UV = {"uv": 1.0, "µv": 1.0, "mv": 1000.0, "v": 1e6}


@dataclass(frozen=True)
class Record:
    """One 12-lead ECG: ``leads`` (12, N) µV at ``fs`` Hz (float64; float32 for synthetic records).

    name: "<database>/<record>" (unique within a run); database: the folder the record
    lives in (e.g. "ludb"), used for record-wise and database-wise splits.
    amplitude_reliable: False when every lead was normalised to the same peak-to-peak
    (LUDB stores each lead scaled to exactly 1 mV p2p): its shapes are real, its absolute
    and relative amplitudes are not.
    """

    name: str
    database: str
    fs: float
    leads: np.ndarray
    amplitude_reliable: bool = True


NORMALISED_P2P_UV = 1000.0


def amplitude_normalised(leads_uv: np.ndarray, tol_uv: float = 2.0) -> bool:
    """True when every lead of (12, N) µV has a peak-to-peak of exactly 1 mV (± ``tol_uv``):
    a per-lead normalised export, not a physical recording."""
    return bool(np.all(np.abs(np.ptp(leads_uv, axis=-1) - NORMALISED_P2P_UV) < tol_uv))


def read_wfdb_record(header: str | Path, database: str | None = None) -> Record:
    """Read a WFDB record (``.hea`` with ``.dat`` or ``.mat``) into a :class:`Record`.

    Lead names in any case; channels that are not one of the 12 standard leads (e.g. the
    Frank leads of PTB) are ignored; each channel's own gain and units give µV.
    Raises ``ValueError`` when a standard lead is missing or a unit is unknown.
    """
    import wfdb

    header = Path(header)
    rec = wfdb.rdrecord(str(header.with_suffix("")))
    signals = np.asarray(rec.p_signal, dtype=np.float64)
    out = np.full((len(LEADS_12), signals.shape[0]), np.nan)
    for ch, (name, unit) in enumerate(zip(rec.sig_name, rec.units)):
        try:
            lead = canonical_lead_name(name)
        except KeyError:
            continue
        scale = UNIT_SCALE_TO_UV.get(str(unit).strip().lower())
        if scale is None:
            raise ValueError(f"{header}: channel {name} has unknown units {unit!r}")
        out[LEADS_12.index(lead)] = signals[:, ch] * scale
    missing = [lead for lead, row in zip(LEADS_12, out) if np.isnan(row).all()]
    if missing:
        raise ValueError(f"{header}: leads {', '.join(missing)} are missing")
    out = np.nan_to_num(out, nan=0.0)
    database = database or header.parent.name
    return Record(name=f"{database}/{header.stem}", database=database, fs=float(rec.fs), leads=out,
                  amplitude_reliable=not amplitude_normalised(out))


def find_headers(folders: Iterable[str | Path]) -> list[Path]:
    """All ``*.hea`` files under ``folders`` (recursive), sorted for a stable order."""
    found: set[Path] = set()
    for folder in folders:
        folder = Path(folder)
        found.update(folder.rglob("*.hea") if folder.is_dir() else [folder])
    return sorted(found)


def load_wfdb_records(folders: Iterable[str | Path], exclude_db: Sequence[str] = ()) -> list[Record]:
    """Every readable 12-lead WFDB record under ``folders``, minus the databases in
    ``exclude_db`` (folder names); unreadable records are logged and skipped."""
    records = []
    for header in find_headers(folders):
        if header.parent.name in exclude_db:
            continue
        try:
            records.append(read_wfdb_record(header))
        except (ValueError, OSError) as exc:
            log.warning("skipping %s: %s", header, exc)
    return records


def load_npy_records(folder: str | Path, fs: float) -> list[Record]:
    """(12, N) µV ``.npy`` arrays in ``folder`` (read without pickle) at ``fs`` Hz."""
    folder = Path(folder)
    records = []
    for path in sorted(folder.glob("*.npy")):
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[0] != len(LEADS_12) or arr.dtype.kind not in "iuf":
            log.warning("skipping %s: shape %s is not a (12, N) numeric array", path, arr.shape)
            continue
        records.append(Record(f"{folder.name}/{path.stem}", folder.name, float(fs),
                              arr.astype(np.float64)))
    return records


def load_data_folder(folder: str | Path, fs: float) -> list[Record]:
    """WFDB records under ``folder`` if it holds any ``.hea``, else its (12, N) .npy arrays."""
    folder = Path(folder)
    if folder.is_file() or any(folder.rglob("*.hea")):
        return load_wfdb_records([folder])
    return load_npy_records(folder, fs)


SYNTHETIC_FS = 500.0


def load_synthetic(n: int, cache_dir: str | Path, seed: int = 0) -> list[Record]:
    """``n`` deepfake-ecg records (10 s, 500 Hz; I, II, V1–V6 in µV; limb leads derived).

    Generated once with ``torch.manual_seed(seed)`` into ``cache_dir`` as ``<id>.asc`` and
    packed into ``synthetic_<n>_<seed>.npy`` so later runs read them back quickly.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    packed = cache_dir / f"synthetic_{n}_{seed}.npy"
    if packed.is_file():
        data = np.load(packed, allow_pickle=False)
    else:
        missing = [i for i in range(n) if not (cache_dir / f"{i}.asc").is_file()]
        if missing:
            import deepfakeecg
            import torch

            torch.manual_seed(seed)
            deepfakeecg.generate(n, str(cache_dir), start_id=0, run_device="cpu")
        data = np.stack([np.loadtxt(cache_dir / f"{i}.asc", dtype=np.int32).T for i in range(n)])
        np.save(packed, data.astype(np.int16))
    records = []
    for i, packed_eight in enumerate(data):
        # (8, 5000) µV in the order I, II, V1..V6; converted one record at a time, to float32
        # (whole µV, exact), so a pool of 16000 records holds 3.8 GB and not three times that
        eight = packed_eight.astype(np.float32)
        leads = assemble_12_leads(eight[0], eight[1], eight[2:2 + len(CHEST_LEADS)])
        records.append(Record(f"synthetic/{i}", "synthetic", SYNTHETIC_FS, leads))
    return records


def split_records(names: Sequence[str], val_fraction: float, seed: int,
                  max_val: int = 64) -> tuple[list[str], list[str]]:
    """Record-wise split with a fixed seed: (train names, validation names), both sorted;
    at most ``max_val`` validation records, none when there are 4 records or fewer."""
    names = sorted(names)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    n_val = min(int(round(len(names) * val_fraction)), max_val) if len(names) > 4 else 0
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val
