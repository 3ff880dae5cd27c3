"""`ecg-dicom convert` as a user runs it: real single-lead recordings, bad inputs, exit status."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import synthetic_lead

from ecg_dicom.cli import main
from ecg_dicom.convert.batch import process_and_save_npy_files
from ecg_dicom.core.checkpoint import load_checkpoint

ALIVECOR = ("A00001", "A00004", "A00205")


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def convert(inp: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return main(["convert", str(inp), str(out), "--checkpoint", str(ckpt), *extra])


def test_real_alivecor_recordings_convert_to_12_leads(shared_data, tiny_checkpoint, tmp_path):
    """AliveCor handheld (lead I-like, 300 Hz, int16 with 1000 adu/mV, i.e. µV)."""
    inp = tmp_path / "in"
    inp.mkdir()
    sources = {}
    for rec in ALIVECOR:
        val = scipy.io.loadmat(shared_data / "single_lead/challenge2017_alivecor" / f"{rec}.mat")["val"]
        sources[rec] = val.astype(np.float32)  # (1, N) µV
        np.save(inp / f"{rec}.npy", sources[rec])
    before = folder_digest(inp)
    assert convert(inp, tmp_path / "out", tiny_checkpoint, "--fs", "300", "--confidence") == 0
    for rec, src in sources.items():
        out = np.load(tmp_path / "out" / f"{rec}.npy")
        assert out.shape == (12, src.shape[1]) and out.dtype == np.float32
        np.testing.assert_array_equal(out[0], src[0])
        conf = json.loads((tmp_path / "out" / f"{rec}.confidence.json").read_text())
        assert set(conf["leads"]) == {"II", "V1", "V2", "V3", "V4", "V5", "V6"}
    assert folder_digest(inp) == before


def test_millivolt_input_comes_out_in_microvolts(tiny_checkpoint, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    x = synthetic_lead()
    np.save(inp / "mv.npy", x / 1000)
    assert convert(inp, tmp_path / "out", tiny_checkpoint, "--units", "mV") == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "mv.npy")[0], x, rtol=1e-5)


BAD_INPUTS = {
    "nan": (np.r_[synthetic_lead()[:100], np.nan, synthetic_lead()[101:]], "NaN"),
    "empty": (np.zeros(0, np.float32), "empty"),
    "twelve": (np.zeros((12, 5000), np.float32), "not one lead"),
    "short": (synthetic_lead(1.0), "too short"),
    "millivolts": (synthetic_lead() / 1000, "mV given as µV"),
    "adc": (synthetic_lead() * 50, "raw ADC counts"),
    "strings": (np.array(["x"] * 5000), "not a numeric array"),
}


def test_each_bad_input_gets_a_reason_and_the_rest_convert(tiny_checkpoint, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for stem, (array, _) in BAD_INPUTS.items():
        np.save(inp / f"{stem}.npy", array)
    np.save(inp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (inp / "garbage.npy").write_bytes(b"this is not numpy")
    (inp / "empty.npy").write_bytes(b"")
    (inp / "blank.dcm").write_bytes(b"")
    np.save(inp / "good.npy", synthetic_lead())
    before = folder_digest(inp)

    assert convert(inp, tmp_path / "out", tiny_checkpoint) == 1
    out = tmp_path / "out"
    assert (out / "good.npy").exists()
    expected = {**{k: m for k, (_, m) in BAD_INPUTS.items()},
                "pickled": "objects", "garbage": "neither a .npy array nor a DICOM file"}
    for empty in ("empty", "blank"):   # its own reason, not a text file's (issue 20 item 4)
        assert (out / f"{empty}.reason.txt").read_text().strip() == "empty file (0 bytes)"
    for stem, match in expected.items():
        assert not (out / f"{stem}.npy").exists()
        assert match in (out / f"{stem}.reason.txt").read_text(), stem
    assert folder_digest(inp) == before


def test_stderr_names_each_skipped_file(tiny_checkpoint, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    np.save(inp / "bad.npy", np.zeros(10))
    assert convert(inp, tmp_path / "out", tiny_checkpoint) == 1
    assert "skipped bad: too short" in capsys.readouterr().err


def test_missing_input_folder_is_a_setup_error(tiny_checkpoint, tmp_path):
    assert convert(tmp_path / "nope", tmp_path / "out", tiny_checkpoint) == 2


def test_seed_api_converts_a_folder(tiny_checkpoint, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    np.save(inp / "a.npy", synthetic_lead())
    model = load_checkpoint(tiny_checkpoint).model
    report = process_and_save_npy_files(inp, tmp_path / "out", model, "cpu")
    assert list(report.written) == ["a"]
    assert np.load(tmp_path / "out" / "a.npy").shape == (12, 5000)


@pytest.mark.parametrize("name", ["../evil", "..", "a/b", "ü ber"])
def test_output_names_never_leave_the_output_folder(name):
    from ecg_dicom.files import safe_stem

    stem = safe_stem(name)
    assert "/" not in stem and not stem.startswith(".") and stem


def test_mixed_folder_of_npy_and_real_dicom(shared_data, tiny_checkpoint, tmp_path):
    """DICOM recognised by content (with or without .dcm); bad DICOM gets a reason file too."""
    import shutil

    import pydicom

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(shared_data / "dicom/12lead/mortara_eli250_waveform_ecg.dcm", inp / "cart.dcm")
    shutil.copy(shared_data / "dicom/hemodynamic/ge_maclab_12lead_in_hemodynamic_sop.dcm", inp / "ge_no_suffix")
    shutil.copy(shared_data / "dicom/non_waveform/CT_small.dcm", inp / "ct.dcm")
    shutil.copy(shared_data / "dicom/malformed/no_meta.dcm", inp / "nometa.dcm")
    np.save(inp / "lead.npy", synthetic_lead())
    out = tmp_path / "out"

    assert convert(inp, out, tiny_checkpoint, "--format", "both") == 1
    for stem, n in (("cart", 10_000), ("ge_no_suffix", 2_400), ("lead", 5_000)):
        arr = np.load(out / f"{stem}.npy")
        assert arr.shape == (12, n), stem
        ds = pydicom.dcmread(out / f"{stem}.dcm")
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"
    cart = pydicom.dcmread(shared_data / "dicom/12lead/mortara_eli250_waveform_ecg.dcm")
    assert pydicom.dcmread(out / "cart.dcm").StudyInstanceUID == cart.StudyInstanceUID
    assert "CT Image Storage" in (out / "ct.reason.txt").read_text()
    assert (out / "nometa.reason.txt").read_text().strip()
    assert not (out / "ct.npy").exists() and not (out / "nometa.npy").exists()


def test_convert_honours_the_same_sidecar_as_the_service(shared_data, tiny_checkpoint, tmp_path, capsys):
    """Issue 11 item 4: a 300 Hz AliveCor recording with its sidecar (rate, units, patient)
    converts at 300 Hz under its patient; a bad sidecar refuses its input; a stray one is named."""
    import pydicom

    inp = tmp_path / "in"
    inp.mkdir()
    val = scipy.io.loadmat(shared_data / "single_lead/challenge2017_alivecor/A00001.mat")["val"][0]
    np.save(inp / "alivecor.npy", val.astype(np.float32) / 1000)          # mV this time
    (inp / "alivecor.json").write_text(json.dumps({"fs": 300, "units": "mV", "lead": "I", "PatientID": "MRN-7",
                                                   "PatientName": "Doe^Jane", "StudyDate": "20240501"}))
    np.save(inp / "badside.npy", synthetic_lead())
    (inp / "badside.json").write_text(json.dumps({"fs": 500, "PatientName": "Doe^Jane"}))
    (inp / "stray.json").write_text(json.dumps({"fs": 250}))
    assert convert(inp, tmp_path / "out", tiny_checkpoint, "--format", "both") == 1
    out = np.load(tmp_path / "out" / "alivecor.npy")
    np.testing.assert_allclose(out[0], val, rtol=1e-5, atol=1e-3)        # read as mV, written in µV
    ds = pydicom.dcmread(tmp_path / "out" / "alivecor.dcm")
    assert float(ds.WaveformSequence[0].SamplingFrequency) == 300.0
    assert int(ds.WaveformSequence[0].NumberOfWaveformSamples) == val.size
    assert (ds.PatientID, str(ds.PatientName), ds.StudyDate) == ("MRN-7", "Doe^Jane", "20240501")
    assert "no PatientID" in (tmp_path / "out" / "badside.reason.txt").read_text()
    assert "stray.json: a sidecar with no stray.npy beside it" in capsys.readouterr().err


def test_vendor_formats_convert_under_their_patient(shared_data, tiny_checkpoint, tmp_path, capsys):
    """GE MUSE, Philips 1.03/1.04, HL7 aECG, SCP-ECG and a WFDB record (.hea + .dat) through `convert`:
    results under the file's patient, valid DICOM; the .dat is read with its header, never as
    an input; a sidecar overrides the file's patient ID."""
    import shutil
    import subprocess

    import pydicom
    from peers import dciodvfy_errors

    inp = tmp_path / "in"
    (inp / "ward").mkdir(parents=True)
    vendor = shared_data / "vendor"
    shutil.copy(vendor / "ge_muse_xml/muse_ecg1.xml", inp / "muse.xml")
    shutil.copy(vendor / "philips_sierra_xml/129DYPRG.XML", inp / "philips103.XML")
    shutil.copy(vendor / "philips_sierra_xml/3191723_ZZDEMOPTONLY_1-04_orig.xml", inp / "ward" / "philips104")
    shutil.copy(vendor / "hl7_aecg/ecg_hl7.xml", inp / "aecg.xml")
    shutil.copy(vendor / "scp_ecg/Example.scp", inp / "cart.scp")
    (inp / "aecg.json").write_text(json.dumps({"PatientID": "SITE-0042", "AccessionNumber": "ACC-9"}))
    for suffix in (".hea", ".dat"):
        shutil.copy(shared_data / f"ecg12/ptbxl/00001_lr{suffix}", inp / f"00001_lr{suffix}")
    out = tmp_path / "out"
    assert convert(inp, out, tiny_checkpoint, "--format", "both", "--report") == 0, capsys.readouterr().err
    expected = {"muse": ("JAX01234", "TEST 05", 5000), "philips103": ("1112010721168bdc", "", 5000),
                "ward/philips104": ("9999", "ZZDEMOPTONLY^ADULT", 5000), "aecg": ("SITE-0042", "Clark", 5000),
                "cart": ("SBJ-123", "Clark", 5000)}
    for stem, (pid, name, n) in expected.items():
        ds = pydicom.dcmread(out / f"{stem}.dcm")
        assert (ds.PatientID, str(ds.PatientName)) == (pid, name), stem
        assert int(ds.WaveformSequence[0].NumberOfWaveformSamples) == n
        assert dciodvfy_errors(out / f"{stem}.dcm") == [], stem
        assert np.load(out / f"{stem}.npy").shape == (12, n)
    assert dciodvfy_errors(out / "aecg.report.dcm") == []
    assert pydicom.dcmread(out / "aecg.report.dcm").PatientID == "SITE-0042"
    aecg = pydicom.dcmread(out / "aecg.dcm")
    assert aecg.AccessionNumber == "ACC-9" and aecg.PatientBirthDate == "19530508" and aecg.StudyDate == "20021122"
    assert aecg.PatientSex == "M" and str(aecg.AcquisitionDateTime).startswith("20021122091000")
    cart = [item for item in aecg.ContributingEquipmentSequence if item.get("ManufacturerModelName") == "ELI250"]
    assert cart and cart[0].Manufacturer == "Mortara Instrument, Inc."
    assert cart[0].InstitutionName == "River City ECG Collection Service"
    pages = sorted(p.name for p in out.rglob("*.pdf"))
    assert len(pages) == 6, pages
    text = subprocess.run(["pdftotext", str(out / "muse.pdf"), "-"], capture_output=True, text=True).stdout
    assert "TEST 05" in text or "JAX01234" in text
    wfdb_ds = pydicom.dcmread(out / "00001_lr.dcm")
    group = wfdb_ds.WaveformSequence[0]
    assert int(group.NumberOfWaveformSamples) / float(group.SamplingFrequency) == 10.0   # 100 Hz record, 10 s
    assert not list(out.glob("*.reason.txt")) and not list(out.glob("*dat*"))
    # a second run finds everything done; a changed signal file makes its record convert again
    capsys.readouterr()
    assert convert(inp, out, tiny_checkpoint, "--format", "both", "--report") == 0
    assert "skipped as done 6" in capsys.readouterr().err
    data = bytearray((inp / "00001_lr.dat").read_bytes())
    data[100] ^= 1
    (inp / "00001_lr.dat").write_bytes(bytes(data))
    assert convert(inp, out, tiny_checkpoint, "--format", "both", "--report") == 0
    assert "converted 1, rejected 0, skipped as done 5" in capsys.readouterr().err


def test_the_rate_of_each_result_says_where_it_came_from_and_an_assumed_one_is_said(tiny_checkpoint, tmp_path,
                                                                                     capsys, shared_data):
    """Issue 20 item 5: a .npy without a sidecar was converted at 500 Hz without a word."""
    import shutil

    inp = tmp_path / "in"
    inp.mkdir()
    np.save(inp / "bare.npy", synthetic_lead())
    np.save(inp / "told.npy", synthetic_lead(fs=250.0))
    (inp / "told.json").write_text(json.dumps({"fs": 250}))
    shutil.copy(shared_data / "dicom/12lead/mortara_eli250_waveform_ecg.dcm", inp / "cart.dcm")
    assert convert(inp, tmp_path / "out", tiny_checkpoint) == 0
    sources = {stem: json.loads((tmp_path / "out" / f"{stem}.json").read_text())["fs_source"]
               for stem in ("bare", "told", "cart")}
    assert sources == {"bare": "assumed (no sidecar)", "told": "sidecar", "cart": "DICOM header"}
    err = capsys.readouterr().err
    assert "1 .npy input(s) without a sidecar's fs: rate assumed 500 Hz (say it with --fs or a sidecar): bare" in err
    # said with --fs: given, and nothing to warn about
    assert convert(inp, tmp_path / "given", tiny_checkpoint, "--fs", "500") == 0
    assert json.loads((tmp_path / "given" / "bare.json").read_text())["fs_source"] == "given (--fs)"
    assert "rate assumed" not in capsys.readouterr().err


def test_a_1000_hz_npy_read_at_the_assumed_rate_is_flagged_on_stderr_and_in_the_json(tiny_checkpoint, tmp_path,
                                                                                      capsys, shared_data):
    from ecg_dicom.training.data import read_wfdb_record

    inp = tmp_path / "in"
    inp.mkdir()
    rec = read_wfdb_record(shared_data / "ecg12" / "ptb" / "s0010_re.hea")
    assert rec.fs == 1000
    np.save(inp / "holter.npy", rec.leads[0][:10_000].astype(np.float32))
    assert convert(inp, tmp_path / "out", tiny_checkpoint) == 0
    meta = json.loads((tmp_path / "out" / "holter.json").read_text())
    assert meta["fs"] == 500 and meta["fs_source"] == "assumed (no sidecar)"
    assert meta["quality"]["status"] == "warn" and [f["code"] for f in meta["quality"]["flags"]] == ["rate"]
    err = capsys.readouterr().err
    assert "ecg-dicom: holter: sampling rate probably higher than 500 Hz" in err and "recorded at 1000 Hz?" in err
