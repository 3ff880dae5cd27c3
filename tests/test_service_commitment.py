"""Storage commitment end to end: ``serve`` C-STOREs to a real Orthanc, asks it to commit
(N-ACTION), and Orthanc reports on a new association to our listener (N-EVENT-REPORT, it
in the SCP role): a job is done only then. While the report cannot come, the job waits,
shows in ``ecg-dicom status``, and is sent and asked again."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import yaml
from peers import PACS_AET, SERVICE_AET, Orthanc, Service, ecg_dicom, free_port, storescu, wait_for, write_config

pytestmark = pytest.mark.slow


def test_a_job_is_done_only_once_orthanc_commits_it(tmp_path, tiny_checkpoint, shared_data):
    ecg = shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"
    pacs = Orthanc(tmp_path / "orthanc")
    cfg = write_config(tmp_path / "site", tiny_checkpoint,
                       pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port,
                             "storage_commitment": True, "commitment_timeout_s": 3.0},
                       http={"host": "127.0.0.1", "port": free_port()})
    svc = Service(cfg)
    # first Orthanc knows our AE at a port nobody listens on: its report cannot arrive
    pacs.modalities = {SERVICE_AET: free_port()}
    pacs.start()
    svc.start()
    try:
        assert storescu(svc.port, [ecg]).returncode == 0
        wait_for(lambda: "awaiting its storage commitment report" in svc.log_text(), 60, "stored, commitment asked")
        [job] = svc.jobs()
        assert job["state"] == "delivering" and job["commitment"] is not None
        results = [svc.output / name for name in job["outputs"] if name.endswith(".dcm")]
        assert all(pacs.copies_of(r) == 1 for r in results)   # stored, yet not done
        out = ecg_dicom("status", "--config", str(cfg))
        assert "awaiting storage commitment" in out.stdout and "awaiting the PACS's report on 2 instance(s)" \
            in out.stdout, out.stdout
        wait_for(lambda: "no storage commitment report within 3 s" in svc.log_text(), 30, "the request to time out")
        assert svc.counts() == {"delivering": 1}
        wait_for(lambda: svc.log_text().count("awaiting its storage commitment report") >= 2, 30,
                 "sent and asked again")

        # Orthanc now knows where we listen: the next request is committed, the job done
        pacs.stop()
        pacs.modalities = {SERVICE_AET: svc.port}
        pacs.start()
        wait_for(lambda: svc.counts() == {"done": 1}, 60, "the job to be committed and done")
        log = svc.log_text()
        assert "2 instance(s) committed by TESTPACS" in log
        assert "audit: association released from TESTPACS" in log   # the report came on its own association
        metrics = pacs_metrics(cfg)
        assert 'ecg_dicom_storage_commitments_total{result="committed"} 1.0' in metrics
        assert 'ecg_dicom_storage_commitments_total{result="timeout"}' in metrics
        assert svc.stop() == 0
    finally:
        svc.kill9()
        pacs.stop()


def pacs_metrics(cfg: Path) -> str:
    """The service's ``/metrics`` text."""
    http = yaml.safe_load(cfg.read_text())["http"]
    with urllib.request.urlopen(f"http://127.0.0.1:{http['port']}/metrics", timeout=10) as rsp:
        return rsp.read().decode()


def test_commitment_needs_a_cstore_peer(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path / "site", tiny_checkpoint,
                       pacs={"dicomweb": {"url": "http://127.0.0.1:8042/dicom-web"}, "storage_commitment": True})
    out = ecg_dicom("status", "--config", str(cfg))
    assert out.returncode == 2 and "storage_commitment and tls are for a C-STORE peer" in out.stderr
