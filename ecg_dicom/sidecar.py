"""The JSON sidecar of a ``.npy`` input: how it was recorded, and whose it is.

A one-lead ``.npy`` carries numbers only. ``<stem>.json`` beside ``<stem>.npy`` says the
rest, with one meaning whichever door the file comes in by (``serve``'s watched folder,
``ecg-dicom convert``)::

    {"fs": 300, "lead": "I", "units": "uV",
     "PatientID": "MRN-0042", "PatientName": "Doe^Jane", "PatientBirthDate": "19700101",
     "PatientSex": "F", "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.1",
     "AccessionNumber": "A1234", "StudyDate": "20240501", "StudyTime": "101500",
     "AcquisitionDateTime": "20240501101502", "InstitutionName": "General Hospital",
     "Manufacturer": "AliveCor", "ManufacturerModelName": "KardiaMobile"}

Every key is optional. ``fs`` (Hz), ``lead`` (the lead recorded) and ``units`` (``uV`` or
``mV``) describe the samples; ``leads`` (e.g. ``["I", "II"]``) names the rows of a ``(2, N)``
``.npy`` holding two leads, in order (the two-lead model ``I+II`` takes such a file); the other keys are DICOM keywords, each checked against its
Value Representation (a date is ``YYYYMMDD``, a time ``HHMMSS``, a UID a valid UID...),
and go into the DICOM result: the patient and study so that it lands in the right study
at PACS, the acquisition time, and the recording device as *Acquisition Equipment*. A
sidecar naming the patient or study must give ``PatientID`` (PACS file by it). An unknown
key, a wrong type or an invalid value refuses the input with a reason that names the key
(never its value: it may identify the patient).

A sidecar belongs to a ``.npy`` only: a DICOM object carries its own rate, lead and patient.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ecg_dicom.core.preprocess import UNIT_TO_UV
from ecg_dicom.errors import InputError
from ecg_dicom.leads import canonical_lead_name
from ecg_dicom.logsafe import wire

SIDECAR_SUFFIX = ".json"
# inputs that may have a sidecar: a .npy (rate, lead, patient), a vendor file (patient keys
# that override the file's own: GE MUSE / Philips / HL7 aECG XML, a WFDB header, SCP-ECG)
SIDECAR_INPUT_SUFFIXES = (".npy", ".xml", ".hea", ".scp")
MAX_SIDECAR_BYTES = 64 * 1024
RECORDING_KEYS = ("fs", "lead", "leads", "units")
MAX_SIDECAR_LEADS = 2
PATIENT_KEYS = ("PatientID", "PatientName", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
              "ReferringPhysicianName", "StudyDescription")
ACQUISITION_KEYS = ("AcquisitionDateTime", "InstitutionName", "Manufacturer", "ManufacturerModelName",
                    "DeviceSerialNumber")
DICOM_KEYS = PATIENT_KEYS + STUDY_KEYS + ACQUISITION_KEYS
KNOWN_KEYS = RECORDING_KEYS + DICOM_KEYS
_DATE_TIME_VRS = ("DA", "TM", "DT")
_TEXT_VRS = ("LT", "ST", "UT")  # may hold line breaks; the others may not hold any control character


@dataclass(frozen=True)
class Sidecar:
    """What a sidecar says. ``fs`` Hz, ``lead`` canonical (``"I"``), ``units`` (``"uV"``...),
    ``leads`` the canonical names of a multi-lead .npy's rows (``("I", "II")``): None when not
    given. ``attributes``: DICOM keyword -> value, validated."""

    fs: float | None = None
    lead: str | None = None
    units: str | None = None
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    leads: tuple[str, ...] | None = None

    @property
    def patient_known(self) -> bool:
        return bool(self.attributes.get("PatientID"))

    def canonical(self) -> str:
        """A stable text of everything it says (part of the result's UIDs: the same samples
        filed under another patient or rate must not get the same instance UIDs)."""
        rows = {"leads": list(self.leads)} if self.leads else {}  # absent when not given: old UIDs hold
        return json.dumps({"fs": self.fs, "lead": self.lead, "units": self.units, **rows, **self.attributes},
                          sort_keys=True, ensure_ascii=True)


def sidecar_path(input_path: str | Path) -> Path | None:
    """Where the sidecar of ``input_path`` is: ``<stem>.json`` beside a ``.npy``, ``.xml``,
    ``.hea`` or ``.scp``; None for any other input (a DICOM file has none)."""
    path = Path(input_path)
    return path.with_suffix(SIDECAR_SUFFIX) if path.suffix.lower() in SIDECAR_INPUT_SUFFIXES else None


def stray_sidecars(folder: str | Path, inputs: list[Path], exclude: list[Path] = ()) -> list[Path]:
    """The ``*.json`` files below ``folder`` (hidden ones and ``exclude`` left out) that are
    no input's sidecar: they apply to nothing, and whoever wrote them should hear so."""
    wanted = {sidecar_path(p) for p in inputs}
    skip = [Path(p).resolve() for p in exclude]
    found = []
    for path in sorted(Path(folder).rglob(f"*{SIDECAR_SUFFIX}")):
        if path in wanted or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if not any(path.resolve().is_relative_to(s) for s in skip):
            found.append(path)
    return found


def read_sidecar(path: str | Path | None) -> Sidecar | None:
    """Read and check the sidecar at ``path``; None when there is none. Raises InputError."""
    if path is None:
        return None
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"sidecar .json is not readable: {exc.strerror}") from exc
    if len(data) > MAX_SIDECAR_BYTES:
        raise InputError(f"sidecar .json is larger than {MAX_SIDECAR_BYTES // 1024} KiB")
    try:
        params = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"sidecar .json is not readable JSON: {exc}") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep, an integer with too many digits
        raise InputError(f"sidecar .json is not usable JSON ({type(exc).__name__})") from exc
    return parse_sidecar(params)


def parse_sidecar(params: Any) -> Sidecar:
    """Check a decoded sidecar (see the module docstring). Raises InputError naming the key."""
    if not isinstance(params, dict):
        raise InputError('sidecar .json must be an object like {"fs": 500, "lead": "I"}')
    for key in params:
        if key not in KNOWN_KEYS:
            hint = next((k for k in KNOWN_KEYS if k.lower() == str(key).lower()), None)
            raise InputError(f"sidecar .json: unknown key {wire(key, 40)}"
                             + (f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(KNOWN_KEYS)})"))
    fs = params.get("fs")
    if fs is not None and (isinstance(fs, bool) or not isinstance(fs, (int, float))
                           or not math.isfinite(fs) or fs <= 0):
        raise InputError(f"sidecar .json: 'fs' must be a positive number of Hz, got {_kind(fs)}")
    lead = params.get("lead")
    if lead is not None:
        if not isinstance(lead, str):
            raise InputError(f"sidecar .json: 'lead' has the wrong type ({_kind(lead)})")
        try:
            lead = canonical_lead_name(lead)
        except KeyError:
            raise InputError(f"sidecar .json: {wire(lead, 20)} is not a lead name") from None
    leads = _parse_leads(params.get("leads"))
    if leads is not None and lead is not None:
        raise InputError("sidecar .json: give 'lead' (a one-lead .npy) or 'leads' (the rows of a"
                         " multi-lead .npy), not both")
    units = params.get("units")
    if units is not None and units not in UNIT_TO_UV:
        raise InputError(f"sidecar .json: 'units' must be one of {', '.join(UNIT_TO_UV)}, got {_kind(units)}")
    attributes = {key: check_attribute(key, params[key]) for key in DICOM_KEYS if key in params}
    attributes = {key: value for key, value in attributes.items() if value}
    identifying = [key for key in PATIENT_KEYS + STUDY_KEYS if key in attributes]
    if identifying and "PatientID" not in attributes:
        raise InputError(f"sidecar .json gives {identifying[0]} but no PatientID: a result is filed at "
                         "PACS by its PatientID, so give it too")
    return Sidecar(float(fs) if fs is not None else None, lead, units, MappingProxyType(attributes), leads)


def _parse_leads(value: Any) -> tuple[str, ...] | None:
    """The sidecar's ``leads``: a list of 1..2 distinct lead names -> canonical names, in order."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_SIDECAR_LEADS:
        raise InputError(f"sidecar .json: 'leads' must be a list of 1 to {MAX_SIDECAR_LEADS} lead names"
                         f' such as ["I", "II"], got {_kind(value)}')
    names = []
    for item in value:
        if not isinstance(item, str):
            raise InputError(f"sidecar .json: 'leads' holds a {_kind(item)}, not a lead name")
        try:
            names.append(canonical_lead_name(item))
        except KeyError:
            raise InputError(f"sidecar .json: 'leads' holds {wire(item, 20)}, not a lead name") from None
    if len(set(names)) != len(names):
        raise InputError("sidecar .json: 'leads' names a lead twice")
    return tuple(names)


def check_attribute(keyword: str, value: Any) -> str:
    """``value`` as the DICOM text of ``keyword``; raises InputError naming the key, not the value."""
    import pydicom  # here, not at the top: a .npy without patient keys does not pay its ~0.3 s import
    from pydicom.datadict import dictionary_VR
    from pydicom.uid import UID
    from pydicom.valuerep import DA, DT, TM, validate_value

    vr = dictionary_VR(keyword)
    if not isinstance(value, str):
        raise InputError(f"sidecar .json: {keyword} must be a string ({vr}), got {type(value).__name__}")
    value = value.strip()
    if not value:
        return value
    if vr not in _TEXT_VRS and any(not ch.isprintable() for ch in value):
        raise InputError(f"sidecar .json: {keyword} holds a control character")
    try:
        validate_value(vr, value, pydicom.config.RAISE)
        if vr in _DATE_TIME_VRS:
            {"DA": DA, "TM": TM, "DT": DT}[vr](value)
    except ValueError:
        raise InputError(f"sidecar .json: {keyword} is not a valid {vr} value{_FORMATS.get(vr, '')}") from None
    if vr == "UI" and not UID(value).is_valid:
        raise InputError(f"sidecar .json: {keyword} is not a valid UID (digits and dots, at most 64)")
    if keyword == "PatientSex" and value not in ("M", "F", "O"):
        raise InputError("sidecar .json: PatientSex must be M, F or O")
    return value


_FORMATS = {"UI": " (a UID: digits and dots, at most 64)", "DA": " (YYYYMMDD)", "TM": " (HHMMSS)", "DT": " (YYYYMMDDHHMMSS)", "AS": " (e.g. 045Y)",
            "PN": " (Family^Given, at most 64 characters a part)", "SH": " (at most 16 characters)",
            "LO": " (at most 64 characters)", "CS": " (upper case, at most 16 characters)"}


def _kind(value: Any) -> str:
    """Type and value for a reason; the value marked as from the input (hashed in the log)."""
    return f"{type(value).__name__} {wire(repr(value), 48)}"
