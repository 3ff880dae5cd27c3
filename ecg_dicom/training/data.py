"""Real 12-lead records (WFDB, .npy) and deepfake-ecg synthetic records, in µV.

Every loader returns :class:`Record` objects holding all 12 leads in
:data:`ecg_dicom.leads.LEADS_12` order, in µV, at the record's own sampling rate.
"""

from __future__ import annotations

import ast
import csv
import hashlib
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
    labels: the :data:`DIAGNOSTIC_CLASSES` the record's own statements name (see
    :func:`diagnostic_classes`); empty when it has none or none is known.
    """

    name: str
    database: str
    fs: float
    leads: np.ndarray
    amplitude_reliable: bool = True
    patient: str = ""
    labels: tuple[str, ...] = ()


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
def _ptbxl_metadata(folder: Path) -> dict[int, tuple[str | None, tuple[str, ...]]]:
    """ecg_id -> (patient_id, SCP-ECG statement codes) from PTB-XL metadata tables
    (``ptbxl_database*.csv``) in ``folder``."""
    table_rows: dict[int, tuple[str | None, tuple[str, ...]]] = {}
    for table in sorted(folder.glob(PTBXL_METADATA_GLOB)):
        with open(table, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    ecg_id = int(row["ecg_id"])
                except (KeyError, ValueError):
                    continue
                try:
                    patient = str(int(float(row["patient_id"])))
                except (KeyError, ValueError):
                    patient = None
                try:  # a dict literal such as "{'NORM': 100.0, 'SR': 0.0}", parsed without eval
                    codes = tuple(ast.literal_eval(row.get("scp_codes") or "{}"))
                except (ValueError, SyntaxError):
                    codes = ()
                table_rows[ecg_id] = (patient, codes)
    return table_rows


def _ptbxl_patients(folder: Path) -> dict[int, str]:
    """ecg_id -> patient_id from PTB-XL metadata tables (``ptbxl_database*.csv``) in ``folder``."""
    return {k: p for k, (p, _) in _ptbxl_metadata(folder).items() if p is not None}


def _database_root(header: Path, database: str) -> Path | None:
    """The database folder above ``header`` (``.../ptbxl`` for ``.../ptbxl/records500/00000/x.hea``)."""
    return next((p for p in Path(os.path.abspath(header)).parents if p.name == database), None)


# Diagnostic classes reported per class (issue 15): PTB-XL's NORM, MI and STTC superclasses and
# the subclasses the hardest external records show most (bundle branch blocks and intraventricular
# conduction delay, left ventricular hypertrophy, premature beats).
DIAGNOSTIC_CLASSES: tuple[str, ...] = ("NORM", "BBB/IVCD", "LVH", "PVC/PAC", "MI", "STTC")
# PTB-XL SCP-ECG statements -> class (scp_statements.csv: diagnostic_class MI / STTC; the others by code).
SCP_TO_CLASS: dict[str, str] = {
    "NORM": "NORM",
    **{code: "BBB/IVCD" for code in ("CRBBB", "CLBBB", "IVCD")},
    "LVH": "LVH",
    **{code: "PVC/PAC" for code in ("PVC", "PAC", "BIGU", "TRIGU")},
    **{code: "MI" for code in ("IMI", "ASMI", "ILMI", "AMI", "ALMI", "INJAS", "LMI", "INJAL", "IPLMI",
                                "IPMI", "INJIN", "INJLA", "PMI", "INJIL")},
    **{code: "STTC" for code in ("NDT", "NST_", "DIG", "LNGQT", "ISC_", "ISCAL", "ISCIN", "ISCIL",
                                  "ISCAS", "ISCLA", "ANEUR", "EL", "ISCAN")},
}
# PhysioNet Challenge 2024 header labels (PTB-XL superclasses and rhythm statements).
CHALLENGE_LABEL_TO_CLASS: dict[str, str] = {"NORM": "NORM", "OldMI": "MI", "AcuteMI": "MI", "MI": "MI",
                                            "STTC": "STTC", "PVC": "PVC/PAC", "PAC": "PVC/PAC"}
# SNOMED CT codes of the Challenge 2020/2021 headers (Georgia, PTB and PTB-XL copies).
SNOMED_TO_CLASS: dict[str, str] = {
    **{code: "BBB/IVCD" for code in ("59118001", "713427006", "164909002", "733534002", "698252002")},
    "164873001": "LVH",
    **{code: "PVC/PAC" for code in ("427172004", "17338001", "284470004", "63593006")},
    **{code: "MI" for code in ("164865005", "164861001", "54329005")},
    **{code: "STTC" for code in ("164934002", "59931005", "428750005", "429622005", "164930006",
                                  "55930002", "111975006")},
}
SINUS_RHYTHM_SNOMED = {"426783006", "426177001", "427084000", "427393009"}  # sinus rhythm, brady, tachy, arrhythmia
# LUDB's diagnosis lines (header comments) -> class; a record with a sinus rhythm, a normal,
# vertical or horizontal axis and no other statement is NORM.
LUDB_TEXT_TO_CLASS: tuple[tuple[str, str], ...] = (
    ("complete right bundle branch block", "BBB/IVCD"), ("complete left bundle branch block", "BBB/IVCD"),
    ("intravintricular conduction delay", "BBB/IVCD"), ("intraventricular conduction delay", "BBB/IVCD"),
    ("left ventricular hypertrophy", "LVH"), ("extrasystol", "PVC/PAC"),
    ("stemi", "MI"), ("scar formation", "MI"), ("ischemia/scar", "MI"),
    ("ischemia", "STTC"), ("repolarization abnormalities", "STTC"),
)


def diagnostic_classes(comments: Sequence[str], database: str, scp_codes: Sequence[str] = ()) -> tuple[str, ...]:
    """The :data:`DIAGNOSTIC_CLASSES` a record's statements name, in that order.

    Sources: PTB-XL's ``scp_codes`` (any statement, whatever its likelihood), the Challenge
    2024 ``# Labels:`` and 2024 first-phase ``#Dx: Normal`` header comments, the Challenge
    2020/2021 SNOMED CT ``#Dx:`` codes (Georgia, PTB, PTB-XL copies; sinus rhythm alone is
    NORM), PTB's "Reason for admission" and LUDB's diagnosis lines. "Incomplete" bundle branch blocks are not BBB/IVCD.
    """
    found: set[str] = {SCP_TO_CLASS[c] for c in scp_codes if c in SCP_TO_CLASS}
    fields: dict[str, str] = {}
    for line in comments:
        key, sep, value = line.lstrip("#").strip().partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if "labels" in fields:
        found |= {CHALLENGE_LABEL_TO_CLASS[lab.strip()] for lab in fields["labels"].split(",")
                  if lab.strip() in CHALLENGE_LABEL_TO_CLASS}
    dx = fields.get("dx", "")
    if dx.lower() == "normal":
        found.add("NORM")
    codes = {c.strip() for c in dx.split(",") if c.strip().isdigit()}
    found |= {SNOMED_TO_CLASS[c] for c in codes if c in SNOMED_TO_CLASS}
    if codes and codes <= SINUS_RHYTHM_SNOMED:
        found.add("NORM")
    if "myocardial infarction" in fields.get("reason for admission", "").lower():   # PTB's clinical summary
        found.add("MI")
    if database == "ludb":
        lines = [line.lstrip("#").strip().lower() for line in comments]
        statements = [line for line in lines if line and not line.startswith(("<", "rhythm:", "electric axis"))]
        for line in statements:
            found |= {cls for text, cls in LUDB_TEXT_TO_CLASS
                      if text in line and not line.startswith("incomplete")}
        axis_ok = any(line.startswith("electric axis") and any(a in line for a in ("normal", "vertical", "horizontal"))
                      for line in lines)
        if not statements and axis_ok and any(line.startswith("rhythm: sinus") for line in lines):
            found.add("NORM")
    return tuple(c for c in DIAGNOSTIC_CLASSES if c in found)


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
        root = _database_root(header, database)
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
    scp: tuple[str, ...] = ()
    if database == "ptbxl" and (ecg_id := ptbxl_ecg_id(header.stem)) is not None:
        root = _database_root(header, database)
        scp = _ptbxl_metadata(root).get(ecg_id, (None, ()))[1] if root is not None else ()
    return Record(name=f"{database}/{header.stem}", database=database, fs=float(rec.fs), leads=out,
                  amplitude_reliable=not amplitude_normalised(out), patient=subject_of(header, database),
                  labels=diagnostic_classes(rec.comments or [], database, scp))


def find_record(root: str | Path, name: str) -> Record:
    """The record called ``name`` ("<database>/<record>", as :class:`Record` names it, e.g.
    ``ptbxl/00002_hr``) under ``root`` (the folder holding the database folders), wherever
    the database's own layout keeps it. Raises ``FileNotFoundError`` when there is none."""
    database, _, stem = name.partition("/")
    for header in sorted((Path(root) / database).rglob(f"{stem}.hea")):
        if database_of(header) == database:
            return read_wfdb_record(header)
    raise FileNotFoundError(f"no record {name!r} under {root}")


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


def split_records(names: Sequence[str], val_fraction: float, seed: int, max_val: int = 64,
                  groups: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Split with a fixed seed: (train names, validation names), both sorted; about
    ``val_fraction`` (at most ``max_val``) validation records, none when there are 4 records
    or fewer. With ``groups`` (name -> subject), whole subjects go to one side: subjects are
    drawn in a seeded order until the validation share is reached."""
    names = sorted(names)
    rng = np.random.default_rng(seed)
    n_val = min(int(round(len(names) * val_fraction)), max_val) if len(names) > 4 else 0
    if groups is None:
        order = rng.permutation(len(names))
        val = {names[i] for i in order[:n_val]}
    else:
        subjects = sorted({groups.get(n, n) for n in names})
        members: dict[str, list[str]] = {}
        for n in names:
            members.setdefault(groups.get(n, n), []).append(n)
        val = set()
        for i in rng.permutation(len(subjects)):
            if len(val) >= n_val:
                break
            if len(val) + len(members[subjects[i]]) <= max(n_val, 1):
                val.update(members[subjects[i]])
    return sorted(n for n in names if n not in val), sorted(val)


def patient_hash(patient: str) -> float:
    """A subject id mapped to [0, 1) by SHA-256: the same on every machine and run, and
    independent of which other records are loaded."""
    return int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big") / 2.0**64


def parse_patient_fold(spec: str) -> tuple[str, int, int]:
    """``"ptbxl:2/5"`` -> ("ptbxl", 2, 5): fold 2 of 5 of a database's subjects (folds 0..4)."""
    database, sep, fold = spec.partition(":")
    k, slash, n = fold.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = -1
    if not sep or not slash or not database or not (n_i >= 2 and 0 <= k_i < n_i):
        raise ValueError(f"patient fold {spec!r} is not DATABASE:K/N with 0 <= K < N and N >= 2")
    return database, k_i, n_i


def in_patient_fold(record: Record, folds: Sequence[tuple[str, int, int]]) -> bool:
    """True when ``record``'s subject falls in fold K of N of its database for any
    (database, K, N) of ``folds``: subjects with :func:`patient_hash` in [K/N, (K+1)/N).
    All records of a subject land on the same side, in training and in evaluation alike."""
    return any(record.database == db and k / n <= patient_hash(record.patient or record.name) < (k + 1) / n
               for db, k, n in folds)


def select_records(folders: Iterable[str | Path], fs: float, patient_folds: Sequence[str] = ()) -> list[Record]:
    """Records of ``folders`` (see :func:`load_data_folder`; ``fs`` for .npy arrays), only
    those in the patient folds ``DB:K/N`` when any are given. Raises ``ValueError`` for a
    malformed fold."""
    folds = [parse_patient_fold(spec) for spec in patient_folds]
    records = [r for folder in folders for r in load_data_folder(folder, fs)]
    return [r for r in records if in_patient_fold(r, folds)] if folds else records
