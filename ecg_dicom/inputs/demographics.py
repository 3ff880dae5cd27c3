"""Patient, study and acquisition as a vendor file states them, as a :class:`Sidecar`.

A vendor file (MUSE, Philips, aECG, WFDB) carries its own patient and acquisition; the
readers collect what they find as DICOM keywords (:data:`ecg_dicom.sidecar.DICOM_KEYS`),
in the file's own spelling, and :func:`file_sidecar` normalises each value (dates to
``YYYYMMDD``, times to ``HHMMSS``, sex to ``M``/``F``/``O``, names to ``Family^Given``)
and checks it against its VR the way a sidecar ``.json`` is checked. An invalid value is
left out with a log line that names the key only (never the value: it may identify the
patient). Without a Patient ID the patient and study keys are left out (a result is filed
at PACS by its Patient ID: it is then marked as an unknown patient); the acquisition
keys stay. A real sidecar ``.json`` beside the file overrides key by key
(:func:`merge_sidecar`).
"""

from __future__ import annotations

import logging
import re
from types import MappingProxyType
from typing import Mapping

from ecg_dicom.errors import InputError
from ecg_dicom.sidecar import ACQUISITION_KEYS, PATIENT_KEYS, STUDY_KEYS, Sidecar, check_attribute

LOG = logging.getLogger("ecg_dicom.inputs")

_DATE_FORMATS = (
    (re.compile(r"^(\d{4})(\d{2})(\d{2})"), (1, 2, 3)),            # YYYYMMDD[hhmmss...] (HL7, DICOM)
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$"), (1, 2, 3)),     # YYYY-MM-DD (Philips)
    (re.compile(r"^(\d{1,2})[-/](\d{1,2})[-/](\d{4})$"), (3, 1, 2)),  # MM-DD-YYYY (GE MUSE)
    (re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})$"), (3, 2, 1)),   # DD.MM.YYYY
)
_TIME = re.compile(r"^(\d{1,2}):?(\d{2}):?(\d{2})?")
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def norm_date(text: str) -> str:
    """A date in one of the vendor spellings as ``YYYYMMDD``; "" when it is none of them."""
    text = (text or "").strip()
    for pattern, (y, m, d) in _DATE_FORMATS:
        match = pattern.match(text)
        if match:
            return f"{int(match.group(y)):04d}{int(match.group(m)):02d}{int(match.group(d)):02d}"
    return ""


def norm_time(text: str) -> str:
    """``HH:MM[:SS]`` or ``HHMMSS`` as ``HHMMSS``; "" otherwise."""
    match = _TIME.match((text or "").strip())
    if not match:
        return ""
    return f"{int(match.group(1)):02d}{match.group(2)}{match.group(3) or '00'}"


def norm_sex(text: str) -> str:
    """``M``/``F``/``O`` from the vendor's word; "" for unknown or anything else."""
    return _SEX.get((text or "").strip().upper(), "")


def person_name(family: str, given: str = "") -> str:
    """``Family^Given`` (DICOM PN), "" when both are empty."""
    family, given = (family or "").strip(), (given or "").strip()
    if not family and not given:
        return ""
    return f"{family}^{given}" if given else family


def age_years(text: str) -> str:
    """A whole number of years as a DICOM Age String (``060Y``); "" otherwise."""
    text = (text or "").strip()
    return f"{int(text):03d}Y" if text.isdigit() and 0 < int(text) < 1000 else ""


def acquisition(date: str, time: str) -> dict[str, str]:
    """StudyDate, StudyTime and AcquisitionDateTime from a normalised date and time."""
    found = {}
    if date:
        found["StudyDate"] = date
        found["AcquisitionDateTime"] = date + (time or "")
        if time:
            found["StudyTime"] = time
    return found


def file_sidecar(found: Mapping[str, str], kind: str) -> Sidecar | None:
    """The DICOM keywords a vendor file gave (values as normalised by the reader), checked;
    None when nothing usable is left. ``kind`` names the format in log lines."""
    attributes: dict[str, str] = {}
    for key, value in found.items():
        value = (value or "").strip()
        if not value:
            continue
        try:
            value = check_attribute(key, value)
        except InputError:
            LOG.warning("%s input: its %s is not a valid DICOM value: left out", kind, key)
            continue
        if value:
            attributes[key] = value
    if "PatientID" not in attributes:
        dropped = [key for key in PATIENT_KEYS + STUDY_KEYS if key in attributes and key not in ("StudyDate",
                                                                                                 "StudyTime")]
        if dropped:
            LOG.warning("%s input: no patient ID in the file; %s left out (the result is marked as an unknown "
                        "patient)", kind, ", ".join(dropped))
        attributes = {key: value for key, value in attributes.items()
                      if key in ACQUISITION_KEYS or key in ("StudyDate", "StudyTime")}
    return Sidecar(attributes=MappingProxyType(attributes)) if attributes else None


def merge_sidecar(from_file: Sidecar | None, given: Sidecar | None) -> Sidecar | None:
    """The file's own keywords overridden key by key by a real sidecar ``.json`` (``given``)."""
    if given is None:
        return from_file
    if from_file is None:
        return given
    return Sidecar(given.fs, given.lead, given.units, MappingProxyType({**from_file.attributes, **given.attributes}))
