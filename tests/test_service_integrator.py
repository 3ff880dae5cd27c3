"""The integrator's day (issues 10 and 11) against real peers: a ``serve`` subprocess, DCMTK
carts, Orthanc as PACS, dciodvfy. One service and one Orthanc for the module; each test
drops or sends its own inputs and checks its own jobs."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_lead
from peers import Orthanc, Service, dciodvfy_errors, stored_ok, storescu, wait_for
from pydicom import dcmread

pytestmark = pytest.mark.slow
MORTARA = Path("dicom") / "12lead" / "mortara_eli250_waveform_ecg.dcm"


def drop(service: Service, name: str, data: bytes, staging: Path) -> None:
    """The safe way: write elsewhere on the same file system, then rename into the inbox."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / name).write_bytes(data)
    os.replace(staging / name, service.watch / name)


def npy_bytes(array: np.ndarray, path: Path) -> bytes:
    np.save(path, array)
    return path.read_bytes()


def dicom_with_uid(shared_data: Path, uid: str, path: Path) -> Path:
    ds = dcmread(shared_data / MORTARA)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(path, enforce_file_format=True)
    return path


def jobs_of(service: Service, source_names: list[str], since_id: int) -> list[dict]:
    return [j for j in service.jobs() if j["id"] > since_id and j["source_name"] in source_names]


def in_orthanc(pacs: Orthanc, dcm: Path) -> bool:
    uid = dcmread(dcm, stop_before_pixels=True).SOPInstanceUID
    return any(hit["Type"] == "Instance" for hit in pacs.lookup(uid))


def test_twelve_inputs_in_six_clashing_groups_give_twelve_results(service, pacs, shared_data, tmp_path):
    """Issue 10 item 1: 12 inputs whose names clean up alike, in 6 groups; 12 done, 12 results
    in the outbox and 12 in Orthanc, and the job -> files mapping recorded."""
    start_id = max((j["id"] for j in service.jobs()), default=0)
    stage = tmp_path / "stage"
    lead = iter(synthetic_lead(seconds=5.0 + i, seed=100 + i) for i in range(8))
    uid_u = "1.2.826.0.1.3680043.10.543.77"
    dropped = {
        "x y.npy": npy_bytes(next(lead), tmp_path / "a.npy"),             # 1: space vs underscore
        "x_y.npy": npy_bytes(next(lead), tmp_path / "b.npy"),
        "Müller.npy": npy_bytes(next(lead), tmp_path / "c.npy"),          # 2: umlaut vs underscore
        "M_ller.npy": npy_bytes(next(lead), tmp_path / "d.npy"),
        "ecg.npy": npy_bytes(next(lead), tmp_path / "e.npy"),             # 3: .npy vs .dcm
        "ecg.dcm": dicom_with_uid(shared_data, "1.2.826.0.1.3680043.10.543.78", tmp_path / "e.dcm").read_bytes(),
        f"{uid_u}.npy": npy_bytes(next(lead), tmp_path / "f.npy"),        # 4: C-STORE of U vs U.npy
    }
    for name, data in dropped.items():
        drop(service, name, data, stage)
    same_name = "HR06000_leadI.npy"                                       # 5: the same name twice
    drop(service, same_name, npy_bytes(next(lead), tmp_path / "g.npy"), stage)
    wait_for(lambda: not (service.watch / same_name).exists(), 30, "the first HR06000_leadI.npy to be taken")
    drop(service, same_name, npy_bytes(next(lead), tmp_path / "h.npy"), stage)
    sent = [dicom_with_uid(shared_data, uid, tmp_path / f"wire{i}.dcm")   # 4 and 6: wire UIDs U, '..', '.'
            for i, uid in enumerate((uid_u, "..", "."))]
    result = storescu(service.port, sent)
    assert len(stored_ok(result.stdout + result.stderr)) == 3, result.stdout + result.stderr

    names = [*dropped, same_name, f"{uid_u}.dcm", "...dcm", "..dcm"]
    wait_for(lambda: len(jobs_of(service, names, start_id)) == 12
             and all(j["state"] == "done" for j in jobs_of(service, names, start_id)),
             120, "12 jobs done (delivered)")
    jobs = jobs_of(service, names, start_id)
    stems = [j["stem"] for j in jobs]
    assert len(set(stems)) == 12, stems
    outputs = [name for j in jobs for name in j["outputs"]]
    assert len(outputs) == len(set(outputs)) == 12 * 5   # .npy .dcm .json + the page: .pdf .report.dcm
    assert sorted(o for o in outputs if o.endswith(".npy")) == sorted(f"{s}.npy" for s in stems)
    results = [service.output / name for name in outputs if name.endswith(".dcm")]
    assert all(p.is_file() for p in results) and all((service.output / f"{s}.npy").is_file() for s in stems)
    sop_uids = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in results}
    assert len(sop_uids) == 24                           # 12 waveforms and their 12 report pages
    assert all(in_orthanc(pacs, p) for p in results)
    # each result holds its own input: a dropped lead comes back unchanged as lead I
    for job in jobs:
        if job["source_name"].endswith(".npy"):
            sent_lead = np.load(io.BytesIO(dropped.get(job["source_name"], b"")), allow_pickle=False) \
                if job["source_name"] != same_name else None
            if sent_lead is not None:
                leads = np.load(service.output / f"{job['stem']}.npy", allow_pickle=False)
                np.testing.assert_allclose(leads[0], sent_lead, atol=1e-3)
    assert all(dciodvfy_errors(p) == [] for p in results[:3])


def orthanc_patient_and_study(pacs: Orthanc, dcm: Path) -> tuple[dict, dict]:
    """(patient, study) main tags Orthanc filed the result ``dcm`` under."""
    uid = dcmread(dcm, stop_before_pixels=True).SOPInstanceUID
    [hit] = [h for h in pacs.lookup(uid) if h["Type"] == "Instance"]
    study = pacs.get(f"/instances/{hit['ID']}/study")
    patient = pacs.get(f"/studies/{study['ID']}/patient")
    return patient["MainDicomTags"], study["MainDicomTags"]


def test_a_dropped_recording_lands_in_its_patients_study_at_pacs(service, pacs, shared_data, tmp_path):
    """Issue 11 item 1: the sidecar's patient and study put the result into the cart's study
    at PACS (beside the cart's own ECG); without them the result is filed as an unknown
    patient of its own, never under one blank patient."""
    cart = dcmread(shared_data / MORTARA)
    assert storescu(pacs.dicom_port, [shared_data / MORTARA], called=pacs.aet).returncode == 0
    sidecar = {"fs": 500, "lead": "I", "PatientID": str(cart.PatientID), "PatientName": str(cart.PatientName),
               "StudyInstanceUID": str(cart.StudyInstanceUID), "AccessionNumber": str(cart.AccessionNumber),
               "AcquisitionDateTime": "20240501101502", "Manufacturer": "AliveCor"}
    stage = tmp_path / "stage"
    drop(service, "known.json", json.dumps(sidecar).encode(), stage)             # sidecar first
    drop(service, "known.npy", npy_bytes(synthetic_lead(seed=21), tmp_path / "k.npy"), stage)
    drop(service, "anon1.npy", npy_bytes(synthetic_lead(seed=22), tmp_path / "a1.npy"), stage)
    drop(service, "anon2.npy", npy_bytes(synthetic_lead(seed=23), tmp_path / "a2.npy"), stage)
    names = ["known.npy", "anon1.npy", "anon2.npy"]
    wait_for(lambda: [j["state"] for j in jobs_of(service, names, 0)] == ["done"] * 3, 60, "3 jobs delivered")
    stems = {j["source_name"]: j["stem"] for j in jobs_of(service, names, 0)}
    patient, study = orthanc_patient_and_study(pacs, service.output / f"{stems['known.npy']}.dcm")
    assert study["StudyInstanceUID"] == cart.StudyInstanceUID and patient["PatientID"] == cart.PatientID
    result = dcmread(service.output / f"{stems['known.npy']}.dcm")
    assert result.AccessionNumber == cart.AccessionNumber and result.AcquisitionDateTime.startswith("20240501")
    in_study = {i["MainDicomTags"]["SOPInstanceUID"]
                for i in pacs.get(f"/studies/{pacs.lookup(cart.StudyInstanceUID)[0]['ID']}/instances")}
    assert {cart.SOPInstanceUID, result.SOPInstanceUID} <= in_study          # beside the cart's own ECG
    anon = [orthanc_patient_and_study(pacs, service.output / f"{stems[n]}.dcm") for n in names[1:]]
    assert [p["PatientName"] for p, _ in anon] == ["UNKNOWN", "UNKNOWN"]
    assert anon[0][0]["PatientID"] != anon[1][0]["PatientID"] and all(p["PatientID"] for p, _ in anon)
    assert not list(service.watch.iterdir())


def test_a_file_written_in_two_opens_is_taken_whole_and_one_left_cut_short_fails_loudly(service, tmp_path):
    """Issue 11 item 2: `head -c 10000 f > inbox/x.npy; sleep 2.5; tail -c +10001 f >> inbox/x.npy`
    gives one job and the right result; a file that stays cut short is rejected with a reason
    that says so and how to drop files safely, and a WARNING in the log."""
    lead = synthetic_lead(seconds=8.0, seed=31)
    data = npy_bytes(lead, tmp_path / "full.npy")
    with open(service.watch / "two_opens.npy", "wb") as fh:
        fh.write(data[:10_000])
    with open(service.watch / "cut_short.npy", "wb") as fh:
        fh.write(data[:10_000])
    time.sleep(2.5)
    with open(service.watch / "two_opens.npy", "ab") as fh:
        fh.write(data[10_000:])
    names = ["two_opens.npy", "cut_short.npy"]
    wait_for(lambda: {j["state"] for j in jobs_of(service, names, 0)} == {"done", "rejected"}, 60,
             "one result and one rejection")
    whole, cut = jobs_of(service, names, 0)
    assert whole["source_name"] == "two_opens.npy" and whole["state"] == "done"
    np.testing.assert_allclose(np.load(service.output / f"{whole['stem']}.npy")[0], lead, atol=1e-3)
    reason = (service.output / cut["outputs"][-1]).read_text()
    assert "truncated .npy" in reason and "NAME.part, then renaming" in reason
    assert (service.output / cut["outputs"][0]).read_bytes() == data[:10_000]    # the input is kept
    assert "still looks cut short" in service.log_text()


def test_a_sidecar_just_after_its_npy_is_applied_and_one_too_late_is_reported(service, shared_data, tmp_path):
    """Issue 11 item 3: a 300 Hz AliveCor recording whose sidecar arrives 0.3 s after it is
    read at 300 Hz; a sidecar that comes after its .npy was taken is moved out of the inbox
    with a reason naming the job it missed."""
    import scipy.io

    val = scipy.io.loadmat(shared_data / "single_lead/challenge2017_alivecor/A00004.mat")["val"][0]
    np.save(service.watch / "alivecor.npy", val.astype(np.float32))        # written in place
    time.sleep(0.3)
    (service.watch / "alivecor.json").write_text(json.dumps({"fs": 300}))
    wait_for(lambda: [j["state"] for j in jobs_of(service, ["alivecor.npy"], 0)] == ["done"], 60, "the result")
    [job] = jobs_of(service, ["alivecor.npy"], 0)
    ds = dcmread(service.output / f"{job['stem']}.dcm")
    assert float(ds.WaveformSequence[0].SamplingFrequency) == 300.0
    assert int(ds.WaveformSequence[0].NumberOfWaveformSamples) == val.size

    np.save(service.watch / "late.npy", synthetic_lead(seed=41))
    wait_for(lambda: jobs_of(service, ["late.npy"], 0), 30, "late.npy to be taken")
    [taken] = jobs_of(service, ["late.npy"], 0)
    (service.watch / "late.json").write_text(json.dumps({"fs": 250}))
    wait_for(lambda: jobs_of(service, ["late.json"], 0), 30, "the late sidecar to be refused")
    [refused] = jobs_of(service, ["late.json"], 0)
    assert refused["state"] == "rejected" and f"after its .npy was taken (job {taken['id']})" in refused["reason"]
    assert json.loads((service.output / refused["outputs"][0]).read_text()) == {"fs": 250}
    assert not list(service.watch.iterdir())
