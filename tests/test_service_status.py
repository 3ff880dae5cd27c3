"""``ecg-dicom status`` and ``ecg-dicom redeliver`` as an integrator uses them (issue 11 items 7
and 8), against a running service, kill -9, and Orthanc as the PACS."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import synthetic_lead
from peers import (
    PACS_AET,
    Orthanc,
    Service,
    ecg_dicom,
    storescu,
    wait_for,
    write_config,
)
from pydicom import dcmread

pytestmark = pytest.mark.slow
MORTARA = ("dicom", "12lead", "mortara_eli250_waveform_ecg.dcm")


def status(config) -> tuple[str, dict]:
    text = ecg_dicom("status", "--config", str(config))
    data = ecg_dicom("status", "--config", str(config), "--json")
    assert text.returncode == 0 and data.returncode == 0, text.stderr + data.stderr
    return text.stdout, json.loads(data.stdout)


def in_orthanc(pacs: Orthanc, dcm) -> bool:
    uid = dcmread(dcm, stop_before_pixels=True).SOPInstanceUID
    return any(hit["Type"] == "Instance" for hit in pacs.lookup(uid))


def test_status_says_whether_it_runs_and_lists_rejections_and_dead_letters_then_redeliver_sends_them(
        tmp_path, tiny_checkpoint, shared_data):
    ecg = shared_data.joinpath(*MORTARA)
    with Orthanc(tmp_path / "orthanc") as pacs:
        wrong = {"ae_title": "NOTTHEPACS", "host": "127.0.0.1", "port": pacs.dicom_port}
        cfg = write_config(tmp_path / "site", tiny_checkpoint, pacs=wrong)
        svc = Service(cfg).start()
        try:
            text, data = status(cfg)
            assert text.startswith(f"service:       running (pid {svc.proc.pid}")
            assert data["service"]["running"] and data["service"]["pid"] == svc.proc.pid

            # a second service on the same work folder is refused
            second = ecg_dicom("serve", "--config", str(cfg), timeout=120)
            assert second.returncode == 2 and f"another ecg-dicom serve (pid {svc.proc.pid})" in second.stderr

            # a rejection and a dead letter, listed with their reasons
            (svc.watch / "garbage.npy").write_bytes(b"this is no ECG")
            assert storescu(svc.port, [ecg]).returncode == 0
            wait_for(lambda: svc.counts() == {"rejected": 1, "dead": 1}, 60, "a rejection and a dead letter")
            text, data = status(cfg)
            assert "last 1 rejected" in text and "garbage.npy: neither a .npy array nor a DICOM file" in text
            assert "last 1 dead-lettered" in text and "rejected permanently by PACS" in text
            [dead] = data["recent_dead_letters"]
            assert {f"{dead['stem']}.npy", f"{dead['stem']}.dcm"} <= set(dead["outputs"])
            one = ecg_dicom("status", "--config", str(cfg), str(dead["id"]))
            assert f"job {dead['id']}: dead-lettered, from scp" in one.stdout and f"{dead['stem']}.dcm" in one.stdout

            # kill -9: the lock goes with the process, and status says so
            svc.kill9()
            text, data = status(cfg)
            assert text.startswith("service:       NOT RUNNING") and not data["service"]["running"]

            # the PACS fault fixed: redeliver the dead letter
            cfg = write_config(tmp_path / "site", tiny_checkpoint,
                               pacs={**wrong, "ae_title": PACS_AET})
            sent = ecg_dicom("redeliver", "--config", str(cfg), "--dead-letter")
            assert sent.returncode == 0, sent.stderr
            dicom_results = sum(name.endswith(".dcm") for name in dead["outputs"])     # the waveform (+ its page)
            assert f"queued 1 job(s), {dicom_results} DICOM result(s)" in sent.stdout
            assert "at its next start" in sent.stdout
            assert not list((svc.output / "dead-letter").iterdir())
            svc = Service(cfg).start()
            result = svc.output / f"{dead['stem']}.dcm"
            wait_for(lambda: in_orthanc(pacs, result), 60, "the dead letter to reach Orthanc")
            wait_for(lambda: svc.counts() == {"rejected": 1, "done": 1}, 30, "the job to be done")

            # what cannot be sent again is said so
            unknown = ecg_dicom("redeliver", "--config", str(cfg), "999", str(dead["id"] - 1 or 1))
            assert unknown.returncode == 1 and "job 999: no such job" in unknown.stderr
            assert ecg_dicom("redeliver", "--config", str(cfg)).returncode == 2
            assert svc.stop() == 0
        finally:
            svc.kill9()


def test_results_made_before_a_pacs_was_configured_are_sent_by_redeliver(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path / "site", tiny_checkpoint)           # no PACS yet
    with Service(cfg) as svc:
        for i in range(2):
            np.save(tmp_path / f"rec{i}.npy", synthetic_lead(seed=50 + i))
            os.replace(tmp_path / f"rec{i}.npy", svc.watch / f"rec{i}.npy")
        wait_for(lambda: svc.counts() == {"done": 2}, 60, "two results")
        assert ecg_dicom("redeliver", "--config", str(cfg), "--since", "1h").returncode == 2  # no pacs section
    with Orthanc(tmp_path / "orthanc") as pacs:
        cfg = write_config(tmp_path / "site", tiny_checkpoint,
                           pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
        with Service(cfg) as svc:
            sent = ecg_dicom("redeliver", "--config", str(cfg), "--since", "1h")
            assert sent.returncode == 0 and "queued 2 job(s)" in sent.stdout
            assert f"the running service (pid {svc.proc.pid}) sends them now" in sent.stdout
            wait_for(lambda: all(in_orthanc(pacs, svc.output / f"rec{i}.dcm") for i in range(2)), 60,
                     "both results in Orthanc")
            wait_for(lambda: svc.counts() == {"done": 2}, 30, "both jobs done again")
            done = [j for j in svc.jobs() if j["state"] == "done"]
            assert len(pacs.instances()) == sum(n.endswith(".dcm") for j in done for n in j["outputs"])
