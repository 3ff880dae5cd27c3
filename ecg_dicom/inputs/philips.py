"""Philips Sierra ECG XML 1.03, 1.04, 1.04.01 (PageWriter carts, IntelliSpace ECG, TraceMaster).

``<restingecgdata>`` (namespace ``http://www3.medical.philips.com``): the rate in
``dataacquisition/signalcharacteristics/samplingrate``, the resolution (µV per unit) in
``signalresolution`` (1.03) or ``resolution`` (1.04), all leads in one base64
``<parsedwaveforms>``, XLI-compressed (``compressmethod``/``compression="XLI"``) or plain
int16. Leads in the order of ``leadlabels`` (1.04) or of ``acquisitiontype`` STD-12 /
10-WIRE (I, II, III, aVR, aVL, aVF, V1–V6). In XLI files III, aVR, aVL and aVF are stored
as residuals of what I and II predict and are restored here the way the cart coded them.
``durationperchannel`` ms of samples; the last second holds the cart's 1 mV calibration
pulse, not ECG: only the first whole 10 s are kept (see :func:`rhythm_samples`).

XLI, implemented here from its published description (sierra-ecg-tools): per lead, an
8-byte header (int32 size of the block, 2 unused bytes, int16 first sample), then LZW
codes of 10 bits, most significant bit first; the decoded bytes hold the high bytes of all
int16 values then their low bytes; the values are second differences: sample[i] =
2 sample[i-1] - sample[i-2] - (value[i-1] - 64)... see :func:`_undelta`. Decoding is
bounded by the samples the header declares, so a crafted block cannot expand without end.
"""

from __future__ import annotations

import numpy as np
from xml.etree.ElementTree import Element

from ecg_dicom.errors import InputError
from ecg_dicom.inputs.base import LeadInput
from ecg_dicom.inputs.demographics import acquisition, age_years, file_sidecar, norm_date, norm_sex, norm_time, \
    person_name
from ecg_dicom.inputs.leadset import lead_input
from ecg_dicom.inputs.xmlsafe import b64, number, sample_rate, text_of
from ecg_dicom.limits import Limits
from ecg_dicom.logsafe import wire

ROOT = "restingecgdata"
NAMESPACE = "http://www3.medical.philips.com"
WHAT = "Philips Sierra XML"
VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
STD_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_LZW_BITS = 10
# the rhythm the cart records; what follows in durationperchannel is the calibration pulse
RHYTHM_S = 10.0


def read_philips(root: Element, input_lead: str, content_hash: str, limits: Limits) -> LeadInput:
    """``input_lead`` of a parsed Philips document (see the module docstring). Raises InputError."""
    version = text_of(root, "documentinfo/documentversion")
    if version not in VERSIONS:
        raise InputError(f"{WHAT}: document version {wire(version, 12) if version else '(none)'} is not one of "
                         f"{', '.join(VERSIONS)}")
    signal = root.find("dataacquisition/signalcharacteristics")
    waves = root.find("waveforms/parsedwaveforms")
    if waves is None:
        waves = root.find(".//parsedwaveforms")
    if signal is None or waves is None:
        raise InputError(f"{WHAT}: no signalcharacteristics or parsedwaveforms")
    fs = sample_rate(text_of(signal, "samplingrate") or waves.get("samplespersecond"), f"{WHAT}: samplingrate")
    resolution = text_of(signal, "signalresolution") or text_of(signal, "resolution") or waves.get("resolution")
    uv_per_unit = number(resolution, f"{WHAT}: signal resolution (µV per unit)", positive=True)
    duration_ms = number(waves.get("durationperchannel"), f"{WHAT}: durationperchannel", positive=True)
    n = int(round(duration_ms * fs / 1000))
    if n > limits.max_samples_per_channel:
        raise InputError(f"{WHAT}: {n} samples per lead declared, at most {limits.max_samples_per_channel} "
                         "(limits.max_samples_per_channel)")
    labels = lead_labels(signal, waves)
    if waves.get("dataencoding", "Base64") != "Base64":
        raise InputError(f"{WHAT}: waveform encoding {wire(waves.get('dataencoding'), 20)}, only Base64 is known")
    method = waves.get("compressmethod") or waves.get("compression") or "Uncompressed"
    if waves.get("compressflag", "").lower() == "false":  # a method may be named with the flag off
        method = "Uncompressed"
    raw = b64(waves.text, f"{WHAT}: parsedwaveforms", 8 * len(labels) * (n + 1024) + 4096)
    if method == "XLI":
        values = xli_decode(raw, len(labels), n)
        values = restore_limb_leads(values, labels)
    elif method.lower() in ("uncompressed", "none", ""):
        if len(raw) < 2 * n * len(labels):
            raise InputError(f"{WHAT}: {len(raw) // 2} samples stored, {n * len(labels)} declared")
        values = np.frombuffer(raw[: 2 * n * len(labels)], dtype="<i2").reshape(len(labels), n).astype(np.int64)
    else:
        raise InputError(f"{WHAT}: waveform compression {wire(method, 20)}, only XLI or none is known")
    keep = rhythm_samples(n, fs)
    named = {label: values[i, :keep] * uv_per_unit for i, label in enumerate(labels)}
    return lead_input(named, fs, input_lead, content_hash, "philips", WHAT, file_sidecar(demographics(root), "philips"))


def rhythm_samples(n: int, fs: float) -> int:
    """How many of ``n`` samples per lead are ECG: the first 10 s when the file holds more
    (the rest is the 1 mV calibration pulse, at ~10.7–10.9 s of the usual 11 s), else all."""
    return min(n, int(round(RHYTHM_S * fs))) if n > RHYTHM_S * fs else n


def lead_labels(signal: Element, waves: Element) -> list[str]:
    """Lead names in storage order: ``leadlabels`` (1.04), else from the acquisition type."""
    labels = (waves.get("leadlabels") or "").split()
    count = waves.get("numberofleads") or text_of(signal, "numberchannelsvalid") or \
        text_of(signal, "numberchannelsallocated")
    count_n = int(number(count, f"{WHAT}: number of leads", positive=True)) if count else len(labels)
    if not labels:
        kind = text_of(signal, "acquisitiontype")
        if kind not in ("STD-12", "10-WIRE") or count_n > len(STD_12):
            raise InputError(f"{WHAT}: no leadlabels and acquisition type {wire(kind, 20)}: lead order unknown")
        labels = list(STD_12[:count_n])
    if count_n < 1 or count_n > 32:
        raise InputError(f"{WHAT}: {count_n} leads declared")
    return labels[:count_n]


def xli_decode(data: bytes, leads: int, n: int) -> np.ndarray:
    """(leads, n) int64 raw values from XLI blocks; a lead shorter than ``n`` is refused."""
    out = np.zeros((leads, n), dtype=np.int64)
    offset = 0
    for lead in range(leads):
        if offset + 8 > len(data):
            raise InputError(f"{WHAT}: XLI data ends before lead {lead + 1} of {leads}")
        size = int.from_bytes(data[offset:offset + 4], "little", signed=True)
        first = int.from_bytes(data[offset + 6:offset + 8], "little", signed=True)
        offset += 8
        if size < 0 or offset + size > len(data):
            raise InputError(f"{WHAT}: XLI block {lead + 1} declares {size} bytes, {len(data) - offset} remain")
        decoded = _lzw(data[offset:offset + size], 2 * n)
        offset += size
        if len(decoded) < 2 * n:
            raise InputError(f"{WHAT}: XLI lead {lead + 1} holds {len(decoded) // 2} samples, {n} declared "
                             "(leads of unequal length, or a damaged block)")
        packed = np.frombuffer(bytes(decoded[: 2 * n]), dtype=np.uint8)
        values = ((packed[:n].astype(np.int64) << 8) | packed[n:2 * n]).astype(np.uint16).view(np.int16)
        out[lead] = _undelta(values.astype(np.int64), first)
    return out


def _lzw(block: bytes, limit: int) -> bytearray:
    """LZW-decode ``block`` (10-bit codes, MSB first, no clear code) into at most ``limit`` bytes."""
    table: list[bytes] = [bytes([i]) for i in range(256)]
    max_code = (1 << _LZW_BITS) - 2
    out = bytearray()
    previous = b""
    bits = 0
    nbits = 0
    for byte in block:
        bits = (bits << 8) | byte
        nbits += 8
        while nbits >= _LZW_BITS:
            nbits -= _LZW_BITS
            code = (bits >> nbits) & ((1 << _LZW_BITS) - 1)
            bits &= (1 << nbits) - 1
            if code > max_code:
                return out
            if code < len(table):
                entry = table[code]
            elif code == len(table) and previous:
                entry = previous + previous[:1]
            else:
                raise InputError(f"{WHAT}: damaged XLI block (LZW code {code} before it is defined)")
            if previous and len(table) <= max_code:
                table.append(previous + entry[:1])
            out += entry
            previous = entry
            if len(out) >= limit:
                return out
    return out


def _undelta(values: np.ndarray, first: int) -> np.ndarray:
    """Samples from XLI's second differences: x, y = values[0:2]; then each sample is
    2y - x - (the previous stored value - 64), the first previous being ``first``."""
    out = values.copy()
    x, y = int(values[0]), int(values[1])
    last = first
    for i in range(2, len(values)):
        z = 2 * y - x - last
        last = int(values[i]) - 64
        out[i] = z
        x, y = y, z
    return out


def restore_limb_leads(values: np.ndarray, labels: list[str]) -> np.ndarray:
    """III, aVR, aVL, aVF from their stored residuals (XLI files store what I and II do not
    predict): III = II - I - r, aVR = -r - floor((I+II)/2), aVL = floor((I-III)/2) - r,
    aVF = floor((II+III)/2) - r."""
    index = {label: i for i, label in enumerate(labels)}
    if not all(name in index for name in ("I", "II", "III", "aVR", "aVL", "aVF")):
        return values
    out = values.copy()
    i, ii = values[index["I"]], values[index["II"]]
    iii = ii - i - values[index["III"]]
    out[index["III"]] = iii
    out[index["aVR"]] = -values[index["aVR"]] - np.floor_divide(i + ii, 2)
    out[index["aVL"]] = np.floor_divide(i - iii, 2) - values[index["aVL"]]
    out[index["aVF"]] = np.floor_divide(ii + iii, 2) - values[index["aVF"]]
    return out


def demographics(root: Element) -> dict[str, str]:
    """DICOM keywords from ``patient/generalpatientdata`` and ``dataacquisition``."""
    patient = root.find("patient/generalpatientdata")
    acq = root.find("dataacquisition")
    machine = acq.find("machine") if acq is not None else None
    detail = (machine.get("detaildescription") or "") if machine is not None else ""
    institution = text_of(acq, "acquirer/institutionname")
    return {
        "PatientID": text_of(patient, "patientid") or text_of(patient, "MRN"),
        "PatientName": person_name(text_of(patient, "name/lastname"), text_of(patient, "name/firstname")),
        "PatientBirthDate": norm_date(text_of(patient, "age/dateofbirth")),
        "PatientSex": norm_sex(text_of(patient, "sex")),
        "PatientAge": age_years(text_of(patient, "age/years")),
        **acquisition(norm_date(acq.get("date", "") if acq is not None else ""),
                      norm_time(acq.get("time", "") if acq is not None else "")),
        "Manufacturer": "Philips" if detail.startswith("Philips") or machine is not None else "",
        "ManufacturerModelName": (machine.text or "").strip() if machine is not None else "",
        "DeviceSerialNumber": (machine.get("machineid") or "") if machine is not None else "",
        "InstitutionName": institution,
    }
