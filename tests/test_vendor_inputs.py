"""Vendor ECG formats read from the real files in shared/data/vendor and ecg12: GE MUSE XML,
Philips Sierra XML 1.03/1.04 (XLI), HL7 aECG, WFDB; hostile XML refused with a reason."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import wfdb

import crafted
from ecg_dicom.dicom.reader import read_dicom_lead
from ecg_dicom.errors import InputError
from ecg_dicom.inputs import incomplete_reason, input_kind, load_input, load_lead, looks_like_input
from ecg_dicom.inputs.demographics import norm_date, norm_sex, norm_time
from ecg_dicom.leads import LEADS_12
from ecg_dicom.limits import Limits

MUSE = ("muse_ecg1.xml", "muse_ecg2.xml", "muse_ecg3.xml")
PHILIPS = ("129DYPRG.XML", "3191723_ZZDEMOPTONLY_1-04_orig.xml")


@pytest.fixture(scope="module")
def vendor(shared_data: Path) -> Path:
    return shared_data / "vendor"


@pytest.mark.parametrize("name", MUSE)
def test_muse_reads_8_stored_leads_and_computes_the_other_4(vendor, name):
    item = load_lead(vendor / "ge_muse_xml" / name, "I")
    assert item.kind == "muse" and item.fs == 500.0 and item.signal_uv.shape == (5000,)
    assert list(item.source_leads) == list(LEADS_12)
    leads = item.source_leads
    np.testing.assert_allclose(leads["III"], leads["II"] - leads["I"])
    np.testing.assert_allclose(leads["aVF"], leads["II"] - leads["I"] / 2)
    # 4.88 µV per bit: every sample of lead I is a multiple of it
    np.testing.assert_allclose(np.round(leads["I"] / 4.88) * 4.88, leads["I"], atol=1e-6)
    attrs = item.sidecar.attributes
    assert attrs["PatientName"].startswith("TEST 0") and attrs["PatientSex"] == "M" and attrs["PatientAge"] == "060Y"
    assert attrs["StudyDate"] == "20210510" and len(attrs["AcquisitionDateTime"]) == 14
    assert attrs["ManufacturerModelName"] == "MAC55" and attrs["PatientID"]


@pytest.mark.parametrize("name", PHILIPS)
def test_philips_xli_decodes_to_12_leads_without_the_calibration_pulse(vendor, name):
    item = load_lead(vendor / "philips_sierra_xml" / name, "II")
    assert item.kind == "philips" and item.fs == 500.0
    # 11 s stored: 10 s of ECG, then the cart's 1 mV calibration pulse, which is not kept
    assert item.signal_uv.shape == (5000,)
    leads = item.source_leads
    assert list(leads) == list(LEADS_12)
    for name_, lead in leads.items():
        assert 100 < np.ptp(lead) < 10000, name_  # µV: 5 µV per unit applied
        assert not (np.abs(lead[-200:] - 1000) < 1).sum() > 50, f"{name_} ends in the calibration pulse"
    # the restored limb leads obey Einthoven to the unit's rounding (the cart stored residuals)
    assert np.abs(leads["III"] - (leads["II"] - leads["I"])).max() <= 10.0  # 2 units
    assert np.corrcoef(leads["aVF"], leads["II"] - leads["I"] / 2)[0, 1] > 0.99


def test_philips_patient_and_device_come_from_the_file(vendor):
    attrs = load_lead(vendor / "philips_sierra_xml" / PHILIPS[1], "I").sidecar.attributes
    assert attrs["PatientID"] == "9999" and attrs["PatientName"] == "ZZDEMOPTONLY^ADULT"
    assert attrs["PatientBirthDate"] == "19500101" and attrs["PatientSex"] == "M"
    assert attrs["AcquisitionDateTime"] == "20100119151922"
    assert attrs["ManufacturerModelName"] == "PageWriter Touch" and attrs["DeviceSerialNumber"] == "EKG1715"


def test_aecg_and_the_dicom_copy_of_the_same_ecg_agree(vendor, shared_data):
    """ecg_hl7.xml and ecgtoolkit_example_eli250.dcm are one ECG (ECG Toolkit wrote both)."""
    aecg = load_lead(vendor / "hl7_aecg" / "ecg_hl7.xml", "II")
    assert aecg.kind == "aecg" and aecg.fs == 500.0 and list(aecg.source_leads) == list(LEADS_12)
    for lead in ("I", "II", "V2", "V5"):
        dcm = read_dicom_lead(shared_data / "dicom/12lead/ecgtoolkit_example_eli250.dcm", lead).signal_uv
        ours = aecg.source_leads[lead]
        n = min(dcm.size, ours.size)
        assert np.corrcoef(dcm[:n], ours[:n])[0, 1] > 0.99, lead
        assert np.std(ours[:n]) == pytest.approx(np.std(dcm[:n]), rel=0.03), lead
    attrs = aecg.sidecar.attributes
    assert attrs["PatientID"] == "SBJ-123" and attrs["PatientName"] == "Clark" and attrs["PatientSex"] == "M"
    assert attrs["PatientBirthDate"] == "19530508" and attrs["AcquisitionDateTime"] == "20021122091000"
    assert attrs["ManufacturerModelName"] == "ELI250"


@pytest.mark.parametrize("record", ["ptbxl/00001_lr", "ludb/1", "chapman_ningbo/JS00002", "ptb/S0006"])
def test_wfdb_records_read_as_wfdb_reads_them(shared_data, record):
    path = shared_data / "ecg12" / f"{record}.hea"
    item = load_lead(path, "I")
    ref = wfdb.rdrecord(str(path.with_suffix("")))
    k = [n.upper() for n in ref.sig_name].index("I")
    assert item.kind == "wfdb" and item.fs == ref.fs
    np.testing.assert_allclose(item.signal_uv, ref.p_signal[:, k] * 1000, atol=1e-6)
    assert len(item.source_leads) == 12


def test_wfdb_base_date_and_time_become_the_acquisition(shared_data):
    attrs = load_lead(shared_data / "ecg12/chapman_ningbo/JS00002.hea", "I").sidecar.attributes
    assert attrs == {"StudyDate": "20210323", "StudyTime": "202055", "AcquisitionDateTime": "20210323202055"}


def test_formats_are_recognised_by_content_not_extension(vendor, shared_data, tmp_path):
    for src, kind in ((vendor / "ge_muse_xml" / MUSE[0], "muse"), (vendor / "philips_sierra_xml" / PHILIPS[1], "philips"),
                      (vendor / "hl7_aecg" / "ecg_hl7.xml", "aecg")):
        renamed = tmp_path / f"{kind}.bin"
        shutil.copyfile(src, renamed)
        assert input_kind(renamed) == kind and looks_like_input(renamed)
        assert load_lead(renamed, "I").kind == kind
    assert not looks_like_input(shared_data / "ecg12/ptbxl/00001_lr.dat")   # a signal file is no input
    assert input_kind(vendor / "ge_muse_xml" / "LICENSE.musePHI.md") is None
    (tmp_path / "other.xml").write_text("<?xml version='1.0'?><html><body/></html>")
    assert not looks_like_input(tmp_path / "other.xml")


def test_a_sidecar_overrides_the_file_key_by_key(vendor, tmp_path):
    xml = tmp_path / "e.xml"
    shutil.copyfile(vendor / "ge_muse_xml" / MUSE[0], xml)
    (tmp_path / "e.json").write_text(json.dumps({"PatientID": "SITE-42", "AccessionNumber": "ACC1"}))
    item = load_input(xml, "I", sidecar=tmp_path / "e.json")
    assert item.sidecar.attributes["PatientID"] == "SITE-42" and item.sidecar.attributes["AccessionNumber"] == "ACC1"
    assert item.sidecar.attributes["PatientName"] == "TEST 05"   # the file's, not overridden
    (tmp_path / "e.json").write_text(json.dumps({"fs": 250}))
    with pytest.raises(InputError, match="states its own rate"):
        load_input(xml, "I", sidecar=tmp_path / "e.json")


def test_invalid_demographics_are_left_out_naming_the_key_only(vendor, tmp_path, caplog):
    text = (vendor / "ge_muse_xml" / MUSE[0]).read_text("latin-1")
    text = text.replace("<PatientAge>60</PatientAge>", "<DateofBirth>13-45-1950</DateofBirth>")
    text = text.replace("<PatientLastName>TEST 05</PatientLastName>", "<PatientLastName>" + "Q" * 80
                        + "</PatientLastName>")
    (tmp_path / "m.xml").write_text(text, "latin-1")
    attrs = load_lead(tmp_path / "m.xml", "I").sidecar.attributes
    assert "PatientName" not in attrs and "PatientBirthDate" not in attrs and attrs["PatientID"] == "JAX01234"
    assert "PatientName is not a valid" in caplog.text and "Q" * 20 not in caplog.text


def test_normalisers():
    assert norm_date("05-10-2021") == "20210510" and norm_date("1950-01-01") == "19500101"
    assert norm_date("19530508") == "19530508" and norm_date("soon") == ""
    assert norm_time("13:15:18") == "131518" and norm_time("0910") == "091000"
    assert (norm_sex("MALE"), norm_sex("Female"), norm_sex("UNKNOWN")) == ("M", "F", "")


def _muse_text(vendor: Path) -> str:
    return (vendor / "ge_muse_xml" / MUSE[0]).read_text("latin-1")


def _in_rhythm(change):
    """Apply ``change`` to the Rhythm waveform of a MUSE text only (the Median one is not read)."""
    def mutate(text: str) -> str:
        head, rhythm = text.split("<WaveformType>Rhythm</WaveformType>")
        return head + "<WaveformType>Rhythm</WaveformType>" + change(rhythm)
    return mutate


def _shorter_lead(rhythm: str) -> str:
    """Lead I of the rhythm cut to 4000 samples, its counts saying so: leads of unequal length."""
    import base64
    import re
    data = re.search(r"<WaveFormData>([^<]*)</WaveFormData>", rhythm)
    cut = base64.b64encode(base64.b64decode("".join(data.group(1).split()))[:8000]).decode()
    rhythm = rhythm.replace(data.group(0), f"<WaveFormData>{cut}</WaveFormData>", 1)
    return rhythm.replace("<LeadSampleCountTotal>5000</LeadSampleCountTotal>",
                          "<LeadSampleCountTotal>4000</LeadSampleCountTotal>", 1)


@pytest.mark.parametrize("mutate,reason", [
    (lambda t: crafted.BILLION_LAUGHS, "declares entities"),
    (lambda t: crafted.EXTERNAL_ENTITY, "declares entities"),
    (_in_rhythm(lambda t: t.replace("<WaveFormData>", "<WaveFormData>!!", 1)), "not valid base64"),
    (_in_rhythm(lambda t: t.replace("<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>", "", 1)),
     "LeadAmplitudeUnits is missing"),
    (lambda t: t.replace("<SampleBase>500</SampleBase>", "", ), "SampleBase is missing"),
    (lambda t: t.replace("<SampleBase>500</SampleBase>", "<SampleBase>5e9</SampleBase>"), "not a plausible"),
    (lambda t: t.replace("<SampleBase>500</SampleBase>", "<SampleBase>-1</SampleBase>"), "positive"),
    (lambda t: t.replace("<SampleExponent>0</SampleExponent>", "<SampleExponent>1e300</SampleExponent>"),
     "not a plausible power of ten"),
    (_in_rhythm(_shorter_lead), "differ in length"),
    (_in_rhythm(lambda t: t.replace("<LeadSampleCountTotal>5000</LeadSampleCountTotal>",
                                    "<LeadSampleCountTotal>4000</LeadSampleCountTotal>", 1)), "more data than"),
    (lambda t: t[: len(t) // 2], "not well-formed"),
])
def test_hostile_muse_xml_gets_a_typed_one_line_reason(vendor, tmp_path, mutate, reason):
    path = tmp_path / "bad.xml"
    path.write_bytes(mutate(_muse_text(vendor)).encode("latin-1"))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=reason) as info:
        load_lead(path, "I")
    assert "\n" not in str(info.value) and time.monotonic() - t0 < 5


@pytest.mark.parametrize("mutate,reason", [
    (lambda t: t.replace(' unit="uV"/>\n                <digits>', '/>\n                <digits>', 1), "no unit"),
    (lambda t: t.replace('<increment value="0.002" unit="s"/>', ""), "no increment"),
    (lambda t: t.replace("<digits>", "<digits>1 2 3 ", 1), "differ in length"),
])
def test_hostile_aecg_gets_a_typed_reason(vendor, tmp_path, mutate, reason):
    path = tmp_path / "bad.xml"
    path.write_text(mutate((vendor / "hl7_aecg" / "ecg_hl7.xml").read_text()))
    with pytest.raises(InputError, match=reason):
        load_lead(path, "I")


def test_philips_leads_of_unequal_length_are_refused(vendor, tmp_path):
    text = (vendor / "philips_sierra_xml" / PHILIPS[0]).read_text()
    path = tmp_path / "p.xml"
    path.write_text(text.replace('durationperchannel="11000"', 'durationperchannel="20000"'))
    with pytest.raises(InputError, match="samples, 10000 declared"):
        load_lead(path, "I")


def test_a_huge_xml_is_refused_by_size_before_parsing(tmp_path):
    path = tmp_path / "huge.xml"
    with open(path, "wb") as fh:
        fh.write(b"<RestingECG>")
        fh.truncate(500 << 20)  # 500 MB, sparse
    t0 = time.monotonic()
    with pytest.raises(InputError, match="too large"):
        load_lead(path, "I")
    assert time.monotonic() - t0 < 2


def test_wfdb_signal_file_missing_short_or_a_link(shared_data, tmp_path):
    for name in ("00001_lr.hea", "00001_lr.dat"):
        shutil.copyfile(shared_data / "ecg12/ptbxl" / name, tmp_path / name)
    header = tmp_path / "00001_lr.hea"
    data = (tmp_path / "00001_lr.dat").read_bytes()
    (tmp_path / "00001_lr.dat").write_bytes(data[:1000])
    assert "holds 1000 of" in incomplete_reason(header)
    with pytest.raises(InputError, match="holds 41 of the 1000 samples"):
        load_lead(header, "I")
    (tmp_path / "00001_lr.dat").unlink()
    assert "not there yet" in incomplete_reason(header)
    with pytest.raises(InputError, match="is missing"):
        load_lead(header, "I")
    (tmp_path / "00001_lr.dat").symlink_to(shared_data / "ecg12/ptbxl/00001_lr.dat")
    with pytest.raises(InputError, match="not a regular file"):
        load_lead(header, "I")
    text = header.read_text()
    header.write_text(text.replace("00001_lr.dat", "../../etc/passwd", 1))
    with pytest.raises(InputError, match="not a plain file name"):
        load_lead(header, "I")
    header.write_text(text.replace(" 1000\n", " " + "9" * 10000 + "\n", 1))   # no 10,000-digit numbers
    with pytest.raises(InputError):
        load_lead(header, "I")
    header.write_text(text.replace(" 100 ", " 1e400 ", 1))
    with pytest.raises(InputError, match="sampling rate"):
        load_lead(header, "I")


def test_vendor_fuzz_in_process_only_typed_errors(shared_data):
    """Mutated vendor XML straight into the reader: an accepted lead or an InputError, never
    anything else, each within a bounded time."""
    rng = random.Random(20261207)
    sources = [(shared_data / rel).read_bytes() for rel in crafted.VENDOR_XML]
    limits = Limits(max_input_bytes=4 << 20)
    outcomes = {"ok": 0, "refused": 0}
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.xml"
        for _ in range(150):
            path.write_bytes(crafted.vendor_xml_input(rng, sources))
            t0 = time.monotonic()
            try:
                load_lead(path, "I", limits=limits, gated=False)
                outcomes["ok"] += 1
            except InputError as exc:
                assert str(exc) and "\n" not in str(exc)
                outcomes["refused"] += 1
            assert time.monotonic() - t0 < 10
    assert outcomes["refused"] > 50 and outcomes["ok"] > 5, outcomes


# -- SCP-ECG ------------------------------------------------------------------------------------
def _scp(shared_data: Path) -> bytes:
    return (shared_data / "vendor/scp_ecg/Example.scp").read_bytes()


def _with_crc(data: bytearray) -> bytes:
    """The file and section 6 CRCs recomputed (so that the decoder, not the CRC, meets the damage)."""
    import struct

    from ecg_dicom.inputs.scp import crc_ccitt
    struct.pack_into("<I", data, 2, len(data))
    six = 3819 - 1
    size = struct.unpack_from("<I", data, six + 4)[0]
    if six + size <= len(data):
        struct.pack_into("<H", data, six, crc_ccitt(bytes(data[six + 2:six + size])))
    struct.pack_into("<H", data, 0, crc_ccitt(bytes(data[2:])))
    return bytes(data)


def test_scp_dicom_and_aecg_copies_of_one_ecg_agree(shared_data):
    """Example.scp, ecg_hl7.xml and ecgtoolkit_example_eli250.dcm: one ECG in three formats."""
    scp = load_lead(shared_data / "vendor/scp_ecg/Example.scp", "II")
    aecg = load_lead(shared_data / "vendor/hl7_aecg/ecg_hl7.xml", "II")
    assert scp.kind == "scp" and scp.fs == 500.0 and list(scp.source_leads) == list(LEADS_12)
    for lead in LEADS_12:
        dcm = read_dicom_lead(shared_data / "dicom/12lead/ecgtoolkit_example_eli250.dcm", lead).signal_uv
        n = min(dcm.size, scp.source_leads[lead].size)
        assert np.corrcoef(dcm[:n], scp.source_leads[lead][:n])[0, 1] > 0.99, lead
        assert np.std(scp.source_leads[lead][:n]) == pytest.approx(np.std(dcm[:n]), rel=0.03), lead
        np.testing.assert_allclose(scp.source_leads[lead], aecg.source_leads[lead], atol=2.5)  # one unit
    attrs = scp.sidecar.attributes
    assert (attrs["PatientID"], attrs["PatientName"], attrs["PatientSex"]) == ("SBJ-123", "Clark", "M")
    assert attrs["PatientBirthDate"] == "19530508" and attrs["AcquisitionDateTime"] == "20021122091000"
    assert attrs["ManufacturerModelName"] == "ELI250"


def test_damaged_scp_files_get_a_reason(shared_data, tmp_path):
    data = _scp(shared_data)
    path = tmp_path / "x.scp"
    cases = [
        (data[:-100], "declares 33952 bytes"),
        (data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:], "CRC does not match"),
    ]
    flagged = bytearray(data)
    flagged[329 - 1 + 16 + 1] |= 0x01      # section 3: reference beat subtracted
    cases.append((_with_crc(flagged), "reference beat"))
    custom = bytearray(data)
    custom[311 - 1 + 16] = 1                # section 2: one table of its own
    cases.append((_with_crc(custom), "own Huffman tables"))
    bimodal = bytearray(data)
    bimodal[3819 - 1 + 16 + 5] = 1
    cases.append((_with_crc(bimodal), "bimodal"))
    cut = bytearray(data)
    cut[3819 - 1 + 16 + 6:3819 - 1 + 16 + 8] = (2).to_bytes(2, "little")   # lead I: 2 bytes of Huffman data
    cases.append((_with_crc(cut), "Huffman data end"))
    for payload, reason in cases:
        path.write_bytes(payload)
        with pytest.raises(InputError, match=reason):
            load_lead(path, "I")


def test_scp_fuzz_in_process_only_typed_errors(shared_data, tmp_path):
    """Byte damage with the CRCs recomputed, so the section parser and decoder meet it."""
    rng = random.Random(912)
    data = _scp(shared_data)
    path = tmp_path / "f.scp"
    refused = 0
    for _ in range(40):
        out = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(6, 3819 + 200)] = rng.randrange(256)
        path.write_bytes(_with_crc(out))
        t0 = time.monotonic()
        try:
            load_lead(path, "I", gated=False)
        except InputError as exc:
            assert "\n" not in str(exc)
            refused += 1
        assert time.monotonic() - t0 < 10
    assert 3 <= refused < 40   # some damage refused, some harmless (a tag, a reserved byte)


def test_philips_uncompressed_waveforms_are_read_too(vendor, tmp_path):
    """compressflag="False": the same leads as plain little-endian int16, lead after lead."""
    import base64
    import re
    src = vendor / "philips_sierra_xml" / PHILIPS[0]
    xli = load_lead(src, "I")
    text = src.read_text()
    stored = [xli.source_leads[name] / 5.0 for name in LEADS_12]   # the cart stores III.. as they are when plain
    padded = [np.concatenate([lead, np.zeros(500)]) for lead in stored]  # 11 s per lead, as declared
    raw = base64.b64encode(np.concatenate(padded).astype("<i2").tobytes()).decode()
    text = re.sub(r'(<parsedwaveforms[^>]*compressflag=")True(")', r"\1False\2", text)
    text = re.sub(r"(<parsedwaveforms[^>]*>)[^<]*", lambda m: m.group(1) + raw, text)
    (tmp_path / "plain.xml").write_text(text)
    plain = load_lead(tmp_path / "plain.xml", "I")
    for name in LEADS_12:
        np.testing.assert_allclose(plain.source_leads[name], xli.source_leads[name], atol=1e-6)


def test_wfdb_signal_files_are_bounded_by_the_limits(shared_data):
    header = shared_data / "ecg12/ptb/S0006.hea"      # 12 signals, 115,200 samples: 2.7 MB
    with pytest.raises(InputError, match="limits.max_input_bytes"):
        load_lead(header, "I", limits=Limits(max_input_bytes=1 << 20))
    with pytest.raises(InputError, match="limits.max_channels"):
        load_lead(header, "I", limits=Limits(max_channels=8))
    with pytest.raises(InputError, match="limits.max_samples_per_channel"):
        load_lead(header, "I", limits=Limits(max_samples_per_channel=100_000))
