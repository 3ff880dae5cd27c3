"""The report and the quality gate in the running service, against a real Orthanc: the page
goes to PACS as an Encapsulated PDF next to the waveform, the job is delivered only with both,
Orthanc gives the same PDF back, a replay makes no duplicate; a flat lead is rejected with its
reason, a humming one is processed with the warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from peers import Orthanc, dciodvfy_errors, stored_ok, storescu, wait_for
from pydicom import dcmread

from ecg_dicom.dicom.codes import ENCAPSULATED_PDF_STORAGE, TWELVE_LEAD_ECG_STORAGE
from ecg_dicom.dicom.pdf import read_pdf_dicom
from ecg_dicom.training.data import read_wfdb_record

pytestmark = pytest.mark.slow
MORTARA = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"


# `pacs` (Orthanc) and `service` (serve with the tiny model, no `report` key: the page is on by
# default) are the per-module fixtures of conftest.py.


def instance_of(pacs: Orthanc, uid: str) -> str | None:
    hits = [h for h in pacs.lookup(uid) if h["Type"] == "Instance"]
    return hits[0]["ID"] if hits else None


def test_page_reaches_pacs_beside_the_waveform_and_replay_adds_nothing(service, pacs, shared_data, tmp_path):
    source = shared_data / MORTARA
    uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    result = storescu(service.port, [source])
    assert len(stored_ok(result.stdout + result.stderr)) == 1, result.stderr
    wait_for(lambda: service.settled(1), 120, "the job to be delivered")
    assert service.counts() == {"done": 1}
    waveform = dcmread(service.output / f"{uid}.dcm")
    report = dcmread(service.output / f"{uid}.report.dcm")
    ids = {name: wait_for(lambda u=ds.SOPInstanceUID: instance_of(pacs, u), 10, f"{name} in Orthanc")
           for name, ds in (("waveform", waveform), ("report", report))}
    tags = {name: pacs.get(f"/instances/{i}/simplified-tags") for name, i in ids.items()}
    assert tags["waveform"]["StudyInstanceUID"] == tags["report"]["StudyInstanceUID"] == waveform.StudyInstanceUID
    assert tags["waveform"]["SOPClassUID"] == TWELVE_LEAD_ECG_STORAGE
    assert tags["report"]["SOPClassUID"] == ENCAPSULATED_PDF_STORAGE
    back = pacs.download(ids["report"], tmp_path / "from-orthanc.dcm")
    assert read_pdf_dicom(back) == (service.output / f"{uid}.pdf").read_bytes()
    assert dciodvfy_errors(back) == []
    assert "signal quality ok" in service.log_text()
    count = pacs.get("/statistics")["CountInstances"]

    result = storescu(service.port, [source])                  # the cart sends it again
    assert len(stored_ok(result.stdout + result.stderr)) == 1
    wait_for(lambda: service.counts().get("done") == 2 and service.settled(2), 120, "the replay to be delivered")
    assert pacs.get("/statistics")["CountInstances"] == count    # same UIDs: nothing new at PACS


def test_gate_rejects_a_flat_lead_and_warns_a_humming_one(service, shared_data):
    rec = read_wfdb_record(shared_data / "ecg12" / "ptbxl" / "records500" / "00000" / "00009_hr.hea")
    lead = rec.leads[0].astype(np.float32)
    flat = lead.copy()
    flat[700:] = flat[700]
    t = np.arange(lead.size) / 500.0
    hum = (lead + 150 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    before = sum(service.counts().values())
    np.save(service.watch / "flat.npy", flat)
    np.save(service.watch / "hum.npy", hum)
    wait_for(lambda: service.settled(before + 2), 120, "both jobs to settle")
    reason = wait_for(lambda: (service.output / "rejected" / "flat.reason.txt").is_file()
                      and (service.output / "rejected" / "flat.reason.txt").read_text(), 10, "the reason file")
    assert "signal quality too poor" in reason and "flat line or lead off" in reason
    meta = json.loads((service.output / "hum.json").read_text())
    assert meta["quality"]["status"] == "warn" and meta["quality"]["flags"][0]["code"] == "mains"
    assert (service.output / "hum.pdf").is_file() and (service.output / "hum.report.dcm").is_file()
    notes = [str(a.UnformattedTextValue) for a in dcmread(service.output / "hum.dcm").WaveformAnnotationSequence]
    assert any("mains interference" in n for n in notes)
