"""Real 12-lead records (WFDB, .npy) and deepfake-ecg synthetic records, in µV.

Every loader returns :class:`Record` objects holding all 12 leads in
:data:`ecg_dicom.leads.LEADS_12` order, in µV, at the record's own sampling rate.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ecg_dicom.leads import (
    CHEST_LEADS,
    LEADS_12,
    assemble_12_leads,
    canonical_lead_name,
)

log = logging.getLogger(__name__)

UNIT_SCALE_TO_UV = {"uv": 1.0, "µv": 1.0, "mv": 1000.0, "v": 1e6}


@dataclass(frozen=True)
class Record:
    """One 12-lead ECG: ``leads`` (12, N) µV at ``fs`` Hz (float64; float32 for synthetic records).

    name: "<database>/<record>" (unique within a run); database: the database folder the
    record lives in (e.g. "ludb", "ptbxl" for ``ptbxl/records500/00000/00002_hr``; see
    :func:`database_of`), used for database-wise splits. patient: "<database>/<subject>",
    the same for every record of one person where the data says so (see
    :func:`subject_of`), used for patient-grouped splits.
    amplitude_reliable: False when every lead was normalised to the same peak-to-peak
    (LUDB stores each lead scaled to exactly 1 mV p2p): its shapes are real, its absolute
    and relative amplitudes are not.
    """

    name: str
    database: str
    fs: float
    leads: np.ndarray
    amplitude_reliable: bool = True
    patient: str = ""


NORMALISED_P2P_UV = 1000.0


def amplitude_normalised(leads_uv: np.ndarray, tol_uv: float = 2.0) -> bool:
    """True when every lead of (12, N) µV has a peak-to-peak of exactly 1 mV (± ``tol_uv``):
    a per-lead normalised export, not a physical recording."""
    return bool(np.all(np.abs(np.ptp(leads_uv, axis=-1) - NORMALISED_P2P_UV) < tol_uv))


# Folder names that are a database's own layout, not the database: PTB-XL keeps its records in
# records100/ and records500/, each split in buckets named by the thousand (00000, 01000, ...).
_LAYOUT_FOLDER = re.compile(r"^(records\d+|\d+)$")
# Records of one subject that the data README names (../shared/data/README.md): Georgia
# E00006-07 and E00008-10 are consecutive ECGs with the same age and sex; PTB S0006-07 are
# patient004 and S0008-10 patient005 (ptbdb's RECORDS order), s0010_re is patient001.
KNOWN_SUBJECTS: dict[tuple[str, str], str] = {
    **{("georgia", r): "E00006" for r in ("E00006", "E00007")},
    **{("georgia", r): "E00008" for r in ("E00008", "E00009", "E00010")},
    **{("ptb", r): "patient004" for r in ("S0006", "S0007")},
    **{("ptb", r): "patient005" for r in ("S0008", "S0009", "S0010")},
    ("ptb", "s0010_re"): "patient001",
}
PTBXL_METADATA_GLOB = "ptbxl_database*.csv"
_PTBXL_ECG_ID = re.compile(r"^(?:HR)?0*(\d+)(?:_[hl]r)?$")


def database_of(header: str | Path) -> str:
    """The database a record belongs to: the nearest folder above its header that is not
    part of a database's own layout (PTB-XL's ``records500/00000``), e.g. ``ptbxl``."""
    for folder in Path(os.path.abspath(header)).parents:
        if not _LAYOUT_FOLDER.match(folder.name):
            return folder.name
    return Path(header).parent.name


def ptbxl_ecg_id(stem: str) -> int | None:
    """PTB-XL's ecg_id from a record name (``00002_hr``, ``00501_lr``, ``HR06000``), else None."""
    match = _PTBXL_ECG_ID.match(stem)
    return int(match.group(1)) if match else None


@lru_cache(maxsize=None)
def _ptbxl_patients(folder: Path) -> dict[int, str]:
    """ecg_id -> patient_id from PTB-XL metadata tables (``ptbxl_database*.csv``) in ``folder``."""
    patients: dict[int, str] = {}
    for table in sorted(folder.glob(PTBXL_METADATA_GLOB)):
        with open(table, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    patients[int(row["ecg_id"])] = str(int(float(row["patient_id"])))
                except (KeyError, ValueError):
                    continue
    return patients


def subject_of(header: str | Path, database: str) -> str:
    """``"<database>/<subject>"`` for a record: PTB-XL's patient_id where its metadata table
    (beside the records, in the database folder) knows the ecg_id, the subjects the data
    README names, else the record itself (one record, one subject)."""
    header = Path(header)
    stem = header.stem
    if (database, stem) in KNOWN_SUBJECTS:
        return f"{database}/{KNOWN_SUBJECTS[(database, stem)]}"
    if database == "ptbxl":
        ecg_id = ptbxl_ecg_id(stem)
        root = next((p for p in Path(os.path.abspath(header)).parents if p.name == database), None)
        if ecg_id is not None and root is not None:
            patient = _ptbxl_patients(root).get(ecg_id)
            if patient is not None:
                return f"ptbxl/patient{patient}"
        if ecg_id is not None:
            return f"ptbxl/ecg{ecg_id}"
    return f"{database}/{stem}"


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
    database = database or database_of(header)
    return Record(name=f"{database}/{header.stem}", database=database, fs=float(rec.fs), leads=out,
                  amplitude_reliable=not amplitude_normalised(out), patient=subject_of(header, database))


def find_headers(folders: Iterable[str | Path]) -> list[Path]:
    """All ``*.hea`` files under ``folders`` (recursive), sorted for a stable order."""
    found: set[Path] = set()
    for folder in folders:
        folder = Path(folder)
        found.update(folder.rglob("*.hea") if folder.is_dir() else [folder])
    return sorted(found)


def load_wfdb_records(folders: Iterable[str | Path], exclude_db: Sequence[str] = ()) -> list[Record]:
    """Every readable 12-lead WFDB record under ``folders`` (subfolders too), minus the
    databases in ``exclude_db`` (names as :func:`database_of` gives them); unreadable
    records are logged and skipped."""
    records = []
    for header in find_headers(folders):
        if database_of(header) in exclude_db:
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
                              arr.astype(np.float64), patient=f"{folder.name}/{path.stem}"))
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
        records.append(Record(f"synthetic/{i}", "synthetic", SYNTHETIC_FS, leads, patient=f"synthetic/{i}"))
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
