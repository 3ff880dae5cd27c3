"""GE MUSE RestingECG XML (``restecg.dtd``): the rhythm waveform of a resting ECG.

``<Waveform>`` of ``<WaveformType>Rhythm</WaveformType>`` (the ``Median`` beats are not
read), ``<SampleBase>`` Hz (times 10^``SampleExponent``); per lead ``<LeadData>`` with
``<LeadID>``, ``<WaveFormData>`` (base64 little-endian int16), ``<LeadSampleCountTotal>``,
``<LeadAmplitudeUnitsPerBit>`` and ``<LeadAmplitudeUnits>`` (MICROVOLTS, MILLIVOLTS).
MUSE stores 8 leads (I, II, V1–V6); III, aVR, aVL, aVF are computed. Patient from
``<PatientDemographics>``, acquisition from ``<TestDemographics>``.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import numpy as np

from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.inputs.demographics import acquisition, age_years, file_sidecar, norm_date, norm_sex, norm_time, \
    person_name
from ecg_dicom.inputs.leadset import lead_input
from ecg_dicom.inputs.xmlsafe import b64, children, number, sample_rate, text_of
from ecg_dicom.limits import Limits
from ecg_dicom.logsafe import wire

ROOT = "RestingECG"
WHAT = "GE MUSE XML"
_UNITS_TO_UV = {"MICROVOLTS": 1.0, "MICROVOLT": 1.0, "UV": 1.0, "MILLIVOLTS": 1000.0, "MILLIVOLT": 1000.0, "MV": 1000.0}


def read_muse(root: Element, input_lead: str, content_hash: str, limits: Limits) -> LeadInput:
    """``input_lead`` of a parsed MUSE document (see the module docstring). Raises InputError."""
    waveform = next((w for w in children(root, "Waveform") if text_of(w, "WaveformType").lower() == "rhythm"), None)
    if waveform is None:
        raise InputError(f"{WHAT}: no <Waveform> of type Rhythm")
    exponent = number(text_of(waveform, "SampleExponent") or "0", f"{WHAT}: SampleExponent")
    if exponent != int(exponent) or abs(exponent) > 3:
        raise InputError(f"{WHAT}: SampleExponent {exponent:g} is not a plausible power of ten")
    fs = sample_rate(str(number(text_of(waveform, "SampleBase"), f"{WHAT}: SampleBase") * 10 ** int(exponent)),
                     f"{WHAT}: SampleBase")
    leads: dict[str, np.ndarray] = {}
    for data in children(waveform, "LeadData"):
        lead_id = text_of(data, "LeadID")
        what = f"{WHAT}: lead {wire(lead_id, 12)}"
        count = int(number(text_of(data, "LeadSampleCountTotal"), f"{what} LeadSampleCountTotal", positive=True))
        if count > limits.max_samples_per_channel:
            raise InputError(f"{what} declares {count} samples, at most {limits.max_samples_per_channel} "
                             "(limits.max_samples_per_channel)")
        size = int(number(text_of(data, "LeadSampleSize") or "2", f"{what} LeadSampleSize"))
        if size != 2:
            raise InputError(f"{what}: {size}-byte samples, only 2-byte (int16) samples are known")
        per_bit = number(text_of(data, "LeadAmplitudeUnitsPerBit"), f"{what} LeadAmplitudeUnitsPerBit", positive=True)
        units = text_of(data, "LeadAmplitudeUnits").upper()
        if not units:
            raise InputError(f"{what}: LeadAmplitudeUnits is missing (microvolts or millivolts?)")
        if units not in _UNITS_TO_UV:
            raise InputError(f"{what}: unknown LeadAmplitudeUnits {wire(units, 20)}")
        raw = b64(data.findtext("WaveFormData"), f"{what} WaveFormData", 2 * count + 4)
        if len(raw) < 2 * count:
            raise InputError(f"{what}: {len(raw) // 2} samples stored, {count} declared (LeadSampleCountTotal)")
        samples = np.frombuffer(raw[: 2 * count], dtype="<i2").astype(np.float64)
        leads[lead_id] = samples * per_bit * _UNITS_TO_UV[units]
    if not leads:
        raise InputError(f"{WHAT}: the Rhythm waveform holds no <LeadData>")
    return lead_input(leads, fs, input_lead, content_hash, "muse", WHAT, file_sidecar(demographics(root), "muse"))


def demographics(root: Element) -> dict[str, str]:
    """DICOM keywords from ``<PatientDemographics>`` and ``<TestDemographics>``."""
    patient, test = root.find("PatientDemographics"), root.find("TestDemographics")
    age = text_of(patient, "PatientAge") if text_of(patient, "AgeUnits").upper() in ("YEARS", "") else ""
    return {
        "PatientID": text_of(patient, "PatientID"),
        "PatientName": person_name(text_of(patient, "PatientLastName"), text_of(patient, "PatientFirstName")),
        "PatientBirthDate": norm_date(text_of(patient, "DateofBirth")),
        "PatientSex": norm_sex(text_of(patient, "Gender")),
        "PatientAge": age_years(age),
        **acquisition(norm_date(text_of(test, "AcquisitionDate")), norm_time(text_of(test, "AcquisitionTime"))),
        "ManufacturerModelName": text_of(test, "AcquisitionDevice"),
        "InstitutionName": text_of(test, "SiteName"),
        "ReferringPhysicianName": person_name(text_of(test, "RefPhysicianLastName"),
                                              text_of(test, "RefPhysicianFirstName")),
    }
