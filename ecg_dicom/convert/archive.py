"""An archive as ``convert`` sees it: a tree of inputs mirrored by a tree of results.

Both conversion engines (one process, or Ray Data) share what is here, so they find the
same inputs, put the results in the same places and agree on what is already done:

- :func:`find_inputs` walks the input tree (recursively, in sorted order, hidden files and
  folders and the output tree left out) and names each input's results: ``IN/a/b/x.npy``
  -> ``OUT/a/b/x.npy`` / ``x.dcm`` / ``x.reason.txt``. Two inputs of one folder whose names
  clean up alike (``x.npy`` and ``x.dcm``) get distinct stems, so neither overwrites the other.
- :func:`mark_done` records, after every result of an input has been written (atomically),
  a hidden marker ``OUT/a/b/.x.done.json``: the input's sha256 (and its sidecar's), the
  settings it was converted with, and each result file's size. :func:`is_done` trusts a
  result only when that marker matches: an interrupted run's half-done input has no marker
  (or one that no longer matches) and is converted again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ecg_dicom.files import safe_stem, write_bytes_atomic
from ecg_dicom.inputs import file_sha256, looks_like_input, record_sha256, wfdb_companions
from ecg_dicom.sidecar import sidecar_path

DONE_SUFFIX = ".done.json"


@dataclass(frozen=True)
class ArchiveItem:
    """One input file and where its results go.

    source: the input file; out_dir: the folder of its results (mirrors the input's
    folder); stem: the results' file stem; name: ``out_dir``'s path below the output root
    joined with ``stem`` (``"a/b/x"``), for messages and reports.
    """

    source: Path
    out_dir: Path
    stem: str
    name: str

    def to_row(self) -> dict[str, str]:
        """A plain row (for a Ray Dataset)."""
        return {"source": str(self.source), "out_dir": str(self.out_dir), "stem": self.stem, "name": self.name}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ArchiveItem":
        return cls(Path(str(row["source"])), Path(str(row["out_dir"])), str(row["stem"]), str(row["name"]))

    @property
    def marker(self) -> Path:
        """The hidden completion marker of this input's results."""
        return self.out_dir / f".{self.stem}{DONE_SUFFIX}"


def output_stems(names: Iterable[str]) -> dict[str, str]:
    """File name -> result stem for the inputs of one folder, every stem distinct.

    The stem is :func:`safe_stem` of the name without its extension; when several names
    share one (``x.npy`` and ``x.dcm``, ``a b.npy`` and ``a_b.npy``), each of them gets a
    short hash of its own full name appended (``x-1f2e3d4c``), so no result overwrites another.
    """
    base = {name: safe_stem(Path(name).stem) for name in names}
    counts: dict[str, int] = {}
    for stem in base.values():
        counts[stem] = counts.get(stem, 0) + 1
    stems = {}
    for name, stem in base.items():
        if counts[stem] > 1:
            digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        stems[name] = stem
    return stems


def find_inputs(input_dir: str | Path, output_dir: str | Path,
                exclude: Iterable[str | Path] = ()) -> list[ArchiveItem]:
    """Every input below ``input_dir``, in sorted order, with where its results go.

    Inputs are what :func:`ecg_dicom.inputs.looks_like_input` accepts (``.npy``, ``.dcm``,
    DICOM, vendor XML and WFDB headers by content; a WFDB header's signal files are read with
    it, never as inputs of their own); ``.json`` sidecars, hidden files and folders, folders reached through
    symbolic links, ``output_dir`` itself and the folders in ``exclude`` are passed over.
    """
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    skip = {output_dir, *(Path(p).resolve() for p in exclude)}
    items = []
    for folder, dirnames, filenames in os.walk(input_dir):
        here = Path(folder)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip)
        rel = here.relative_to(input_dir)
        inputs = sorted(f for f in filenames if looks_like_input(here / f))
        for filename, stem in output_stems(inputs).items():
            name = stem if rel == Path(".") else f"{rel.as_posix()}/{stem}"
            items.append(ArchiveItem(here / filename, output_dir / rel, stem, name))
    items.sort(key=lambda item: item.name)
    return items


def _fingerprint(source: Path, content_sha256: str | None = None) -> dict[str, str | None]:
    """sha256 of the input (given, or read), of its sidecar (None when it has none) and of a
    WFDB header's signal files (a record whose samples changed is converted again)."""
    sidecar = sidecar_path(source)
    if content_sha256 is None:
        content_sha256 = record_sha256(source) if wfdb_companions(source) else file_sha256(source)
    return {"source_sha256": content_sha256,
            "sidecar_sha256": file_sha256(sidecar) if sidecar is not None and sidecar.is_file() else None}


def mark_done(item: ArchiveItem, settings: dict[str, Any], written: list[Path],
              content_sha256: str) -> Path:
    """Record that ``written`` (all in ``item.out_dir``) are ``item``'s complete results.

    Call only after every result file has been written atomically; the marker itself is
    written atomically too, so it exists only for complete results.
    """
    record = {"source_name": item.source.name, **_fingerprint(item.source, content_sha256), "settings": settings,
              "outputs": {p.name: p.stat().st_size for p in written}}
    return write_bytes_atomic(item.marker, json.dumps(record, indent=1, sort_keys=True).encode())


def clear_done(item: ArchiveItem) -> None:
    """Forget ``item``'s completion (before its results are written again, or when it is refused)."""
    item.marker.unlink(missing_ok=True)


def is_done(item: ArchiveItem, settings: dict[str, Any]) -> bool:
    """Whether ``item``'s results are complete and valid for these settings.

    True only when its marker is readable, was written with the same ``settings``, names
    result files that all exist with their recorded sizes, and the input (and its sidecar)
    still has the recorded sha256.
    """
    try:
        record = json.loads(item.marker.read_bytes())
        if record.get("settings") != settings or not record.get("outputs"):
            return False
        for name, size in record["outputs"].items():
            if "/" in name or (item.out_dir / name).stat().st_size != size:
                return False
        fingerprint = _fingerprint(item.source)
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return all(record.get(key) == value for key, value in fingerprint.items())
