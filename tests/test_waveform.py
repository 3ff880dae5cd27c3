"""Reading one lead from DICOM waveform objects: every real file in shared/data/dicom/.

Lead values are checked against an independent reading: ``dcmdump +L`` prints every
Waveform Data word and every Channel Sensitivity / units / correction / baseline, which a
small parser here turns into µV without pydicom.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, JPEGBaseline8Bit

from ecg_dicom.dicom.codes import ECG_WAVEFORM_SOP_CLASSES, MDC_CODES, SCPECG_CODES
from ecg_dicom.dicom.reader import read_dicom_lead
from ecg_dicom.errors import InputError, WaveformError
from ecg_dicom.leads import LEADS_12

MORTARA = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"
TOOLKIT = "dicom/12lead/ecgtoolkit_example_eli250.dcm"
GE_HEMO = "dicom/hemodynamic/ge_maclab_12lead_in_hemodynamic_sop.dcm"
# file -> (fs Hz, rhythm samples)
READABLE = {MORTARA: (1000.0, 10000), TOOLKIT: (500.0, 5000), GE_HEMO: (240.0, 2400)}
# file -> the reason it is refused (regex)
REFUSED = {
    "dicom/malformed/MR_truncated.dcm":
        r"SOP class MR Image Storage \(1\.2\.840\.10008\.5\.1\.4\.1\.1\.4\) is not an ECG waveform",
    "dicom/malformed/no_meta.dcm": r"not a DICOM Part 10 file: .*File Meta Information",
    "dicom/malformed/meta_missing_tsyntax.dcm": r"no Transfer Syntax UID \(0002,0010\)",
    "dicom/non_waveform/CT_small.dcm":
        r"SOP class CT Image Storage \(1\.2\.840\.10008\.5\.1\.4\.1\.1\.2\) is not an ECG waveform",
}
UNIT_UV = {"uV": 1.0, "mV": 1000.0}
CODE_TO_LEAD = {code: lead for lead, code in SCPECG_CODES.items()}


@dataclass
class DumpedGroup:
    """One multiplex group as dcmdump prints it."""

    samples: int = 0
    fs: float = 0.0
    leads: list[str] = field(default_factory=list)
    sensitivity: list[float] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    correction: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    raw: np.ndarray | None = None

    def lead_uv(self, lead: str) -> np.ndarray:
        ch = self.leads.index(lead)
        value = self.raw[:, ch] * self.sensitivity[ch] * self.correction[ch] + self.baseline[ch]
        return value * UNIT_UV[self.units[ch]]


def dcmdump_groups(path: Path) -> list[DumpedGroup]:
    """Parse ``dcmdump +L`` output into multiplex groups (raw int16 samples, calibration)."""
    assert shutil.which("dcmdump"), "dcmdump (Debian package dcmtk) is required"
    text = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True,
                          check=True).stdout
    groups: list[DumpedGroup] = []
    expect = None
    value = re.compile(r"\((\w{4},\w{4})\) \w\w (?:\[(.*?)\]|(\S+))")
    for line in text.splitlines():
        match = value.search(line)
        if not match:
            continue
        tag, text_value = match.group(1), match.group(2) if match.group(2) is not None else match.group(3)
        if tag == "003a,0004":  # WaveformOriginality opens a group
            groups.append(DumpedGroup())
        elif not groups:
            continue
        group = groups[-1]
        if tag == "003a,0010":
            group.samples = int(text_value)
        elif tag == "003a,001a":
            group.fs = float(text_value)
        elif tag in ("003a,0208", "003a,0211"):
            expect = tag
        elif tag == "0008,0100" and expect == "003a,0208":
            group.leads.append(CODE_TO_LEAD.get(text_value, text_value))
            expect = None
        elif tag == "0008,0100" and expect == "003a,0211":
            group.units.append(text_value)
            expect = None
        elif tag == "003a,0210":
            group.sensitivity.append(float(text_value))
        elif tag == "003a,0212":
            group.correction.append(float(text_value))
        elif tag == "003a,0213":
            group.baseline.append(float(text_value))
        elif tag == "5400,1010":
            words = np.array([int(w, 16) for w in text_value.split("\\")], dtype=np.uint16)
            group.raw = words.view(np.int16).reshape(group.samples, len(group.leads))
    return groups


@pytest.fixture(scope="module")
def mortara(shared_data: Path) -> pydicom.Dataset:
    return pydicom.dcmread(shared_data / MORTARA)


def test_every_shared_dicom_file_is_covered(shared_data: Path) -> None:
    found = {p.relative_to(shared_data).as_posix() for p in (shared_data / "dicom").rglob("*") if p.is_file()}
    assert found == set(READABLE) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(READABLE))
def test_real_file_leads_match_dcmdump(shared_data: Path, name: str) -> None:
    fs, samples = READABLE[name]
    groups = dcmdump_groups(shared_data / name)
    rhythm = max(groups, key=lambda g: g.samples / g.fs)
    assert (rhythm.fs, rhythm.samples) == (fs, samples)
    assert set(rhythm.leads) == set(LEADS_12)
    for lead in LEADS_12:
        got = read_dicom_lead(shared_data / name, lead)
        assert got.lead == lead and got.fs == fs
        assert got.signal_uv.dtype == np.float64 and got.signal_uv.shape == (samples,)
        np.testing.assert_allclose(got.signal_uv, rhythm.lead_uv(lead), rtol=0, atol=1e-9)
    # A real ECG lead in µV: a few hundred µV to a few mV peak to peak.
    assert 100 < np.ptp(got.signal_uv) < 10_000


def test_ge_hemodynamic_millivolts_become_microvolts(shared_data: Path) -> None:
    groups = dcmdump_groups(shared_data / GE_HEMO)
    assert groups[0].units[0] == "mV" and groups[0].sensitivity[0] == pytest.approx(0.00122)
    lead = read_dicom_lead(shared_data / GE_HEMO, "II")
    np.testing.assert_allclose(lead.signal_uv, groups[0].raw[:, 1] * 1.22, atol=1e-9)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_and_non_waveform_files_are_refused(shared_data: Path, name: str) -> None:
    with pytest.raises(WaveformError, match=REFUSED[name]):
        read_dicom_lead(shared_data / name, "I")


def test_waveform_error_is_an_input_error() -> None:
    assert issubclass(WaveformError, InputError)


def test_accepts_an_already_read_dataset(shared_data: Path, mortara: pydicom.Dataset) -> None:
    from_path = read_dicom_lead(shared_data / MORTARA, "V3")
    from_ds = read_dicom_lead(mortara, "v3")
    np.testing.assert_array_equal(from_ds.signal_uv, from_path.signal_uv)
    assert from_ds.dataset is mortara


@pytest.mark.parametrize("sop_class", sorted(ECG_WAVEFORM_SOP_CLASSES))
def test_every_ecg_waveform_class_is_read(mortara: pydicom.Dataset, sop_class: str) -> None:
    ds = copy.deepcopy(mortara)
    ds.SOPClassUID = sop_class
    expected = read_dicom_lead(mortara, "II").signal_uv
    np.testing.assert_array_equal(read_dicom_lead(ds, "II").signal_uv, expected)


def test_mdc_channel_source_codes(mortara: pydicom.Dataset) -> None:
    ds = copy.deepcopy(mortara)
    for group in ds.WaveformSequence:
        for channel in group.ChannelDefinitionSequence:
            source = channel.ChannelSourceSequence[0]
            lead = next(lead for lead, code in SCPECG_CODES.items() if code == source.CodeValue)
            source.CodeValue, source.CodingSchemeDesignator = MDC_CODES[lead], "MDC"
            del source.CodingSchemeVersion
    for lead in ("I", "aVR", "V6"):
        np.testing.assert_array_equal(read_dicom_lead(ds, lead).signal_uv,
                                      read_dicom_lead(mortara, lead).signal_uv)


def test_channel_label_fallback(mortara: pydicom.Dataset) -> None:
    ds = copy.deepcopy(mortara)
    for index, channel in enumerate(ds.WaveformSequence[0].ChannelDefinitionSequence):
        channel.ChannelSourceSequence[0].CodeValue = f"private-{index}"
        channel.ChannelLabel = f"Lead {LEADS_12[index].lower()}"
    np.testing.assert_array_equal(read_dicom_lead(ds, "aVL").signal_uv,
                                  read_dicom_lead(mortara, "aVL").signal_uv)


def test_missing_lead_lists_leads_present(mortara: pydicom.Dataset) -> None:
    ds = copy.deepcopy(mortara)
    source = ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSourceSequence[0]
    source.CodeValue, source.CodeMeaning = "99999", "Esophageal lead"
    # Lead I still sits in the median-beat group, which is never read as a rhythm.
    with pytest.raises(WaveformError, match=r"no lead I in the rhythm waveform; leads present: "
                                            r"«Esophageal lead», II, III, aVR, aVL, aVF, V1"):
        read_dicom_lead(ds, "I")


def test_longest_group_is_the_rhythm_even_unlabelled(mortara: pydicom.Dataset) -> None:
    ds = copy.deepcopy(mortara)
    for group in ds.WaveformSequence:
        del group.MultiplexGroupLabel
    ds.WaveformSequence = pydicom.Sequence(list(reversed(ds.WaveformSequence)))  # median first
    lead = read_dicom_lead(ds, "I")
    assert lead.signal_uv.shape == (10000,)


def test_correction_factor_and_baseline_are_honoured(mortara: pydicom.Dataset) -> None:
    ds = copy.deepcopy(mortara)
    channel = ds.WaveformSequence[0].ChannelDefinitionSequence[1]
    channel.ChannelSensitivity = "0.00125"
    channel.ChannelSensitivityCorrectionFactor = 2
    channel.ChannelBaseline = "0.01"
    channel.ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
    raw = pydicom.waveforms.multiplex_array(ds, 0, as_raw=True)[:, 1]
    expected = (raw * 0.00125 * 2 + 0.01) * 1000
    np.testing.assert_allclose(read_dicom_lead(ds, "II").signal_uv, expected)


@pytest.mark.parametrize("change, reason", [
    (lambda ds: delattr(ds, "WaveformSequence"), r"has no Waveform Sequence \(5400,0100\)"),
    (lambda ds: delattr(ds, "SOPClassUID"), r"no SOP Class UID"),
    (lambda ds: setattr(ds.WaveformSequence[0], "WaveformSampleInterpretation", "MB"),
     r"group 1: unsupported samples: 16 bits allocated, interpretation «MB»"),
    (lambda ds: setattr(ds.WaveformSequence[0], "WaveformData", ds.WaveformSequence[0].WaveformData[:-24]),
     r"waveform data truncated: multiplex group 1 holds 239976 bytes, expected 240000"),
    (lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ExplicitVRBigEndian),
     r"unsupported transfer syntax Explicit VR Big Endian"),
    (lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", JPEGBaseline8Bit),
     r"unsupported transfer syntax JPEG Baseline"),
    (lambda ds: setattr(ds.WaveformSequence[0], "SamplingFrequency", "0"),
     r"group 1 has no valid Sampling Frequency"),
    (lambda ds: delattr(ds.WaveformSequence[0].ChannelDefinitionSequence[0], "ChannelSensitivity"),
     r"lead I has no Channel Sensitivity"),
    (lambda ds: setattr(ds.WaveformSequence[0].ChannelDefinitionSequence[0]
                        .ChannelSensitivityUnitsSequence[0], "CodeValue", "mm[Hg]"),
     r"lead I is in units «mm\[Hg\]», not a voltage"),
    (lambda ds: setattr(ds.WaveformSequence[0], "NumberOfWaveformChannels", 13),
     r"group 1: 12 channel definitions for 13 channels"),
])
def test_broken_waveforms_are_refused_with_their_reason(mortara: pydicom.Dataset, change, reason: str) -> None:
    ds = copy.deepcopy(mortara)
    change(ds)
    with pytest.raises(WaveformError, match=reason):
        read_dicom_lead(ds, "I")


def test_unknown_lead_name_is_refused(mortara: pydicom.Dataset) -> None:
    with pytest.raises(WaveformError, match="'X' is not one of the 12 standard leads"):
        read_dicom_lead(mortara, "X")


def test_truncated_file_is_refused(shared_data: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((shared_data / MORTARA).read_bytes()[:200_000])
    with pytest.raises(WaveformError, match="unreadable DICOM file"):
        read_dicom_lead(cut, "I")


def test_corrupt_bytes_only_ever_raise_waveform_error(shared_data: Path, tmp_path: Path) -> None:
    """Flip bytes in the header and the Waveform Sequence's own header: a reason or a lead."""
    data = (shared_data / MORTARA).read_bytes()
    waveform_sequence = data.find(bytes([0x00, 0x54, 0x00, 0x01]))  # (5400,0100), little-endian
    assert waveform_sequence > 0
    rng = np.random.default_rng(7)
    outcomes = {"read": 0, "refused": 0}
    for trial in range(80):
        corrupt = bytearray(data)
        lo, hi = (132, 3000) if trial % 2 else (waveform_sequence, waveform_sequence + 1200)
        for pos in rng.integers(lo, hi, size=rng.integers(1, 6)):
            corrupt[int(pos)] = int(rng.integers(0, 256))
        path = tmp_path / "corrupt.dcm"
        path.write_bytes(bytes(corrupt))
        try:
            lead = read_dicom_lead(path, "I")
        except WaveformError:
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
            assert lead.signal_uv.ndim == 1 and lead.fs > 0
    assert outcomes["refused"] > 0 and outcomes["read"] > 0
