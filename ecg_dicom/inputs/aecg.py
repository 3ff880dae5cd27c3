"""HL7 v3 Annotated ECG (aECG, the FDA's format for trial ECGs).

``<AnnotatedECG>`` (namespace ``urn:hl7-org:v3``): the rhythm series is the first
``component/series`` (``code`` RHYTHM, or the first one when none says so); its first
``component/sequenceSet`` holds a ``TIME_ABSOLUTE`` or ``TIME_RELATIVE`` sequence
(``GLIST_TS``/``GLIST_PQ``: ``increment`` in s or ms gives the rate) and one ``SLIST_PQ``
sequence per lead (``MDC_ECG_LEAD_I``...): sample = ``origin`` + ``scale`` × digit, in the
unit of ``scale`` (uV, mV, V). Representative beats (``derivation/derivedSeries``) and
annotations are not read. Patient from ``trialSubject`` (its ``id/@extension``, name,
sex, birth time), acquisition from the series' ``effectiveTime`` and its device.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import numpy as np

from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.inputs.demographics import acquisition, file_sidecar, norm_date, norm_sex, norm_time
from ecg_dicom.inputs.leadset import lead_input
from ecg_dicom.inputs.xmlsafe import children, number, sample_rate, text_of
from ecg_dicom.limits import Limits
from ecg_dicom.logsafe import wire

ROOT = "AnnotatedECG"
NAMESPACE = "urn:hl7-org:v3"
WHAT = "HL7 aECG"
_UNIT_TO_UV = {"uV": 1.0, "mV": 1000.0, "V": 1e6, "nV": 1e-3}
_TIME_TO_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_LEAD_PREFIX = "MDC_ECG_LEAD_"


def read_aecg(root: Element, input_lead: str, content_hash: str, limits: Limits) -> LeadInput:
    """``input_lead`` of a parsed aECG document (see the module docstring). Raises InputError."""
    series_list = [s for c in children(root, "component") for s in children(c, "series")]
    if not series_list:
        raise InputError(f"{WHAT}: no component/series")
    series = next((s for s in series_list if (s.find("code") is not None and s.find("code").get("code") == "RHYTHM")),
                  series_list[0])
    sequence_set = next((s for c in children(series, "component") for s in children(c, "sequenceSet")), None)
    if sequence_set is None:
        raise InputError(f"{WHAT}: the rhythm series has no sequenceSet")
    fs = None
    leads: dict[str, np.ndarray] = {}
    for component in children(sequence_set, "component"):
        sequence = component.find("sequence")
        code_el = sequence.find("code") if sequence is not None else None
        value = sequence.find("value") if sequence is not None else None
        if code_el is None or value is None:
            continue
        code = code_el.get("code", "")
        if code.startswith("TIME_"):
            increment = value.find("increment")
            if increment is None:
                raise InputError(f"{WHAT}: the time sequence has no increment (sampling rate unknown)")
            unit = increment.get("unit", "s")
            if unit not in _TIME_TO_S:
                raise InputError(f"{WHAT}: time increment in unknown unit {wire(unit, 10)}")
            step = number(increment.get("value"), f"{WHAT}: time increment", positive=True) * _TIME_TO_S[unit]
            fs = sample_rate(str(1.0 / step), f"{WHAT}: sampling rate (1 / increment)")
        elif code.startswith(_LEAD_PREFIX):
            name = code[len(_LEAD_PREFIX):]
            leads[name] = _digits(value, name, limits)
    if fs is None:
        raise InputError(f"{WHAT}: no TIME_ABSOLUTE/TIME_RELATIVE sequence (sampling rate unknown)")
    if not leads:
        raise InputError(f"{WHAT}: the rhythm sequenceSet holds no MDC_ECG_LEAD_ sequence")
    return lead_input(leads, fs, input_lead, content_hash, "aecg", WHAT, file_sidecar(demographics(root, series),
                                                                                       "aecg"))


def _digits(value: Element, name: str, limits: Limits) -> np.ndarray:
    """One lead's ``origin + scale * digits`` in µV."""
    what = f"{WHAT}: lead {wire(name, 12)}"
    scale, origin = value.find("scale"), value.find("origin")
    if scale is None:
        raise InputError(f"{what} has no scale")
    unit = scale.get("unit")
    if not unit:
        raise InputError(f"{what}: the scale has no unit (microvolts or millivolts?)")
    if unit not in _UNIT_TO_UV:
        raise InputError(f"{what}: scale in unknown unit {wire(unit, 10)}")
    factor = number(scale.get("value"), f"{what} scale", positive=True) * _UNIT_TO_UV[unit]
    offset = 0.0
    if origin is not None:
        origin_unit = origin.get("unit", unit)
        if origin_unit not in _UNIT_TO_UV:
            raise InputError(f"{what}: origin in unknown unit {wire(origin_unit, 10)}")
        offset = number(origin.get("value", "0"), f"{what} origin") * _UNIT_TO_UV[origin_unit]
    text = value.findtext("digits") or ""
    if len(text) > 12 * limits.max_samples_per_channel:
        raise InputError(f"{what}: more than {limits.max_samples_per_channel} samples "
                         "(limits.max_samples_per_channel)")
    try:
        digits = np.array(text.split(), dtype=np.float64)
    except ValueError:
        raise InputError(f"{what}: its digits are not all numbers") from None
    if digits.size > limits.max_samples_per_channel:
        raise InputError(f"{what}: {digits.size} samples, at most {limits.max_samples_per_channel} "
                         "(limits.max_samples_per_channel)")
    if digits.size == 0:
        raise InputError(f"{what}: no digits")
    return offset + factor * digits


def demographics(root: Element, series: Element) -> dict[str, str]:
    """DICOM keywords from the trial subject, the series' time and its device."""
    subject = root.find(".//subjectAssignment/subject/trialSubject")
    person = subject.find("subjectDemographicPerson") if subject is not None else None
    subject_id = subject.find("id") if subject is not None else None
    gender = person.find("administrativeGenderCode") if person is not None else None
    birth = person.find("birthTime") if person is not None else None
    when = series.find("effectiveTime/low")
    if when is None:
        when = root.find("effectiveTime/center")
    stamp = when.get("value", "") if when is not None else ""
    device = series.find("author/seriesAuthor")
    site = root.find("location/testingSite/location")
    return {
        "PatientID": (subject_id.get("extension") or "") if subject_id is not None else "",
        "PatientName": text_of(person, "name"),
        "PatientSex": norm_sex(gender.get("code", "")) if gender is not None else "",
        "PatientBirthDate": norm_date(birth.get("value", "")) if birth is not None else "",
        **acquisition(norm_date(stamp[:8]), norm_time(stamp[8:14]) if len(stamp) >= 12 else ""),
        "Manufacturer": text_of(device, "manufacturerOrganization/name"),
        "ManufacturerModelName": text_of(device, "manufacturedSeriesDevice/manufacturerModelName"),
        "InstitutionName": text_of(site, "name"),
    }
