"""The service end to end against real peers: DCMTK carts, Orthanc as PACS, dciodvfy.

One ``serve`` subprocess and one Orthanc for the module; each test sends its own inputs
and checks its own outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_lead
from peers import (
    CART_AET,
    Orthanc,
    Service,
    dciodvfy_errors,
    echoscu,
    status_counts,
    stored_ok,
    storescu,
    wait_for,
)
from pydicom import dcmread

from ecg_dicom.dicom.reader import read_dicom_lead
from ecg_dicom.queue import STATES

pytestmark = pytest.mark.slow
TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"


def arrived(pacs: Orthanc, dcm: Path) -> str | None:
    """Orthanc's instance id for our result file ``dcm`` once it is there (by SOP Instance UID)."""
    if not dcm.exists():
        return None
    hits = [h for h in pacs.lookup(dcmread(dcm).SOPInstanceUID) if h["Type"] == "Instance"]
    return hits[0]["ID"] if hits else None


def check_result(service: Service, pacs: Orthanc, name: str, n_samples: int, tmp_path: Path) -> None:
    """<name>.npy is (12, N) µV and <name>.dcm arrived in Orthanc as a valid 12-lead object."""
    dcm = service.output / f"{name}.dcm"
    instance = wait_for(lambda: arrived(pacs, dcm), 60, f"{name} to arrive in Orthanc")
    leads = np.load(service.output / f"{name}.npy", allow_pickle=False)
    assert leads.shape == (12, n_samples) and np.isfinite(leads).all()
    received = pacs.download(instance, tmp_path / f"{name}.from-orthanc.dcm")
    assert dciodvfy_errors(received) == []
    ds = dcmread(received)
    assert ds.SOPClassUID == TWELVE_LEAD and ds.Modality == "ECG"
    assert sum(int(g.NumberOfWaveformChannels) for g in ds.WaveformSequence) == 12


def test_echo(service):
    assert echoscu(service.port)


def test_real_dicom_ecgs_are_stored_reconstructed_and_delivered(service, pacs, shared_data, tmp_path):
    inputs = sorted((shared_data / "dicom" / "12lead").glob("*.dcm")) + \
        sorted((shared_data / "dicom" / "hemodynamic").glob("*.dcm"))
    result = storescu(service.port, inputs)
    assert result.returncode == 0, result.stderr
    assert len(stored_ok(result.stdout + result.stderr)) == len(inputs)
    for path in inputs:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        n = read_dicom_lead(path, "I").signal_uv.size
        check_result(service, pacs, str(uid), n, tmp_path)
    log = service.log_text()
    assert f"audit: association released from {CART_AET}@127.0.0.1" in log
    assert f"{len(inputs)} stored" in log


def test_dropped_npy_files_are_taken_and_delivered(service, pacs, tmp_path):
    lead = synthetic_lead(seconds=8.0, fs=500.0, seed=3)
    np.save(service.watch / "dropped_500hz.npy", lead)       # written in place: taken when closed
    staged = tmp_path / "dropped_250hz.npy"
    np.save(staged, synthetic_lead(seconds=8.0, fs=250.0, seed=4))
    (service.watch / "dropped_250hz.json").write_text(json.dumps({"fs": 250, "lead": "I"}))
    os.replace(staged, service.watch / "dropped_250hz.npy")  # moved in: complete at once
    check_result(service, pacs, "dropped_500hz", lead.size, tmp_path)
    check_result(service, pacs, "dropped_250hz", 2000, tmp_path)
    assert not list(service.watch.iterdir())


def test_vendor_files_dropped_are_delivered_under_their_patient(service, pacs, shared_data, tmp_path):
    """GE MUSE, Philips 1.04 (UTF-16), HL7 aECG, SCP-ECG and a WFDB record dropped into the watched
    folder reach Orthanc as waveform + page under the patient the file names. The WFDB header
    comes first, its .dat a moment later: the header waits for it and both go as one job."""
    import shutil
    import time

    vendor = shared_data / "vendor"
    drops = {"muse_drop.xml": (vendor / "ge_muse_xml/muse_ecg2.xml", "JAX12345"),
             "philips_drop.xml": (vendor / "philips_sierra_xml/3191723_ZZDEMOPTONLY_1-04_orig.xml", "9999"),
             "aecg_drop": (vendor / "hl7_aecg/ecg_hl7.xml", "SBJ-123"),
             "scp_drop.scp": (vendor / "scp_ecg/Example.scp", "SBJ-123")}
    for name, (src, _) in drops.items():
        staged = tmp_path / name
        shutil.copy(src, staged)
        os.replace(staged, service.watch / name)
    ptbxl = shared_data / "ecg12/ptbxl"
    shutil.copy(ptbxl / "00001_lr.hea", service.watch / "rec_drop.hea")
    time.sleep(1.5)  # longer than stable_s: the header alone is seen complete and must wait
    header = (service.watch / "rec_drop.hea").read_text()
    assert (service.watch / "rec_drop.hea").exists(), "a header was taken without its signal file"
    (service.watch / "rec_drop.hea").write_text(header.replace("00001_lr", "rec_drop"))
    staged = tmp_path / "rec_drop.dat"
    shutil.copy(ptbxl / "00001_lr.dat", staged)
    os.replace(staged, service.watch / "rec_drop.dat")
    expected = {"muse_drop": ("JAX12345", 5000), "philips_drop": ("9999", 5000), "aecg_drop": ("SBJ-123", 5000),
                "scp_drop": ("SBJ-123", 5000), "rec_drop": (None, None)}
    for name, (patient_id, n) in expected.items():
        if n is None:
            n = np.load(wait_for(lambda: (service.output / f"{name}.npy").exists() and service.output / f"{name}.npy",
                                 60, "the WFDB result")).shape[1]
        check_result(service, pacs, name, n, tmp_path)
        page = wait_for(lambda: arrived(pacs, service.output / f"{name}.report.dcm"), 60, f"{name}'s page in Orthanc")
        received = pacs.download(page, tmp_path / f"{name}.page.dcm")
        assert dciodvfy_errors(received) == []
        waveform = dcmread(service.output / f"{name}.dcm")
        assert dcmread(received).PatientID == waveform.PatientID
        if patient_id is not None:
            assert waveform.PatientID == patient_id
            patients = pacs.get("/patients?expand")
            assert any(p["MainDicomTags"].get("PatientID") == patient_id for p in patients)
        else:   # a WFDB header names no patient: marked unknown, its recording time kept
            assert waveform.PatientID.startswith("UNKNOWN-")
    assert not list(service.watch.iterdir())
    assert not list(service.output.glob("rejected/rec_drop*"))


def test_caller_not_allowed_and_wrong_called_ae_are_refused(service, shared_data):
    ecg = shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"
    before = sum(service.counts().values())
    result = storescu(service.port, [ecg], calling="INTRUDER")
    assert result.returncode != 0 and "Calling AE Title Not Recognized" in result.stderr + result.stdout
    result = storescu(service.port, [ecg], called="SOMEONEELSE")
    assert result.returncode != 0 and "Called AE Title Not Recognized" in result.stderr + result.stdout
    assert not echoscu(service.port, calling="INTRUDER")
    assert sum(service.counts().values()) == before
    wait_for(lambda: "refused from INTRUDER@127.0.0.1" in service.log_text(), 5, "the audit line")


def test_ct_image_is_refused(service, shared_data):
    before = sum(service.counts().values())
    result = storescu(service.port, [shared_data / "dicom" / "non_waveform" / "CT_small.dcm"])
    assert result.returncode != 0
    assert "No presentation context" in result.stderr + result.stdout
    assert sum(service.counts().values()) == before


def test_malformed_dropped_files_get_reasons_and_the_service_goes_on(service, shared_data):
    bad = {
        "no_meta.dcm": (shared_data / "dicom" / "malformed" / "no_meta.dcm").read_bytes(),
        "ct_image.dcm": (shared_data / "dicom" / "non_waveform" / "CT_small.dcm").read_bytes(),
        "notes.txt": b"this is not an ECG\n",
    }
    for name, data in bad.items():
        (service.watch / name).write_bytes(data)
    nan_lead = synthetic_lead(seconds=5.0)
    nan_lead[100] = np.nan
    np.save(service.watch / "has_nan.npy", nan_lead)
    np.save(service.watch / "two_d.npy", np.zeros((3, 5000), np.float32))
    np.save(service.watch / "too_short.npy", synthetic_lead(seconds=1.0))
    rejected = service.output / "rejected"
    for name in ("no_meta", "ct_image", "notes.txt", "has_nan", "two_d", "too_short"):
        reason = wait_for(lambda: (rejected / f"{name}.reason.txt").exists() and (rejected / f"{name}.reason.txt"),
                          30, f"a reason file for {name}")
        assert reason.read_text().strip()
    assert (rejected / "ct_image.dcm").read_bytes() == bad["ct_image.dcm"]   # the original is kept
    assert "1.2.840.10008.5.1.4.1.1.2" in (rejected / "ct_image.reason.txt").read_text()
    assert "NaN" in (rejected / "has_nan.reason.txt").read_text()
    assert "not one lead" in (rejected / "two_d.reason.txt").read_text()
    assert "too short" in (rejected / "too_short.reason.txt").read_text()
    assert echoscu(service.port)  # still alive
    assert not (service.output / "has_nan.npy").exists()


def test_stored_ecg_without_the_input_lead_is_acked_then_rejected(service, shared_data, tmp_path):
    """Validation happens after the ack, in the worker: Success on the wire, reason file later."""
    ds = dcmread(shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.1"
    for group in ds.WaveformSequence:   # relabel lead I as a second V1
        for channel in group.ChannelDefinitionSequence:
            if channel.ChannelSourceSequence[0].CodeValue == "5.6.3-9-1":
                channel.ChannelSourceSequence[0].CodeValue = "5.6.3-9-3"
                channel.ChannelSourceSequence[0].CodeMeaning = "Lead V1"
    path = tmp_path / "no_lead_i.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = storescu(service.port, [path])
    assert result.returncode == 0 and stored_ok(result.stdout + result.stderr) == [str(path)]
    reason = service.output / "rejected" / f"{ds.SOPInstanceUID}.reason.txt"
    wait_for(reason.exists, 30, "the reason file")
    assert "no lead I" in reason.read_text()
    assert (service.output / "rejected" / f"{ds.SOPInstanceUID}.dcm").is_file()
    assert not (service.output / f"{ds.SOPInstanceUID}.npy").exists()


def test_status_command_prints_counts(service):
    wait_for(lambda: service.settled(0), 60, "the queue to settle")
    printed = status_counts(service.config)
    in_store = {**dict.fromkeys(STATES, 0), **service.counts()}
    in_store["dead-lettered"] = in_store.pop("dead")
    assert printed == in_store


def test_log_names_no_patient_and_no_file(service, shared_data):
    """Runs last in this module: nothing that identified a patient or an input reached the log."""
    log = service.log_text()
    assert "job " in log
    secrets = {"dropped_500hz", "dropped_250hz", "has_nan", "no_meta", "muse_drop", "philips_drop", "JAX12345",
               "SBJ-123", "Clark", "ZZDEMOPTONLY"}
    for path in (shared_data / "dicom").rglob("*.dcm"):
        ds = dcmread(path, stop_before_pixels=True, force=True)
        secrets |= {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))} - {""}
    assert secrets and not [s for s in secrets if s in log]
