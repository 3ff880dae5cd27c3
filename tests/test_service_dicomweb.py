"""DICOMweb delivery end to end: ``serve`` STOW-RSes its results to a real Orthanc (DICOMweb
plugin, basic auth, password from the environment); the durability of the C-STORE path
repeated for it: Orthanc down, then kill -9 with jobs in the outbox, then Orthanc back:
everything delivered once, nothing lost."""

from __future__ import annotations

import urllib.request

import pytest
from peers import Orthanc, Service, ecg_dicom, free_port, storescu, wait_for, write_config
from test_service_recovery import make_inputs

pytestmark = pytest.mark.slow
USER, PASSWORD = "stow", "pw-from-the-environment"


def test_orthanc_down_then_kill_9_with_jobs_in_the_outbox_loses_and_duplicates_nothing(
        tmp_path, tiny_checkpoint, shared_data, monkeypatch):
    inputs = make_inputs(shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm", tmp_path / "cart", 6)
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, users={USER: PASSWORD})
    pacs.start()
    pacs.stop()   # down when the results are ready
    monkeypatch.setenv("ECG_STOW_PASSWORD", PASSWORD)   # the service inherits it
    metrics_port = free_port()
    cfg = write_config(tmp_path / "site", tiny_checkpoint,
                       pacs={"dicomweb": {"url": pacs.dicomweb_url,
                                          "auth": {"scheme": "basic", "username": USER,
                                                   "secret_env": "ECG_STOW_PASSWORD"}}},
                       http={"host": "127.0.0.1", "port": metrics_port})
    svc = Service(cfg).start()
    try:
        assert storescu(svc.port, list(inputs)).returncode == 0
        wait_for(lambda: svc.counts() == {"delivering": len(inputs)}, 90, "results ready, awaiting delivery")
        wait_for(lambda: "delivery attempt 2 failed (no connection" in svc.log_text(), 30, "retries against Orthanc down")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as rsp:
            metrics = rsp.read().decode()
        [failures] = [line for line in metrics.splitlines() if line.startswith('ecg_dicom_pacs_failures_total{kind="transient"}')]
        assert float(failures.split()[-1]) >= 2 * len(inputs)   # every job tried at least twice
        status = ecg_dicom("status", "--config", str(cfg))
        assert f"delivering:    {len(inputs)}" in status.stdout, status.stdout

        svc.kill9()   # jobs in the outbox, their retry schedule in the job store
        pacs.start()
        svc.start()
        wait_for(lambda: svc.counts() == {"done": len(inputs)}, 90, "every job delivered after the restart")
        results = [svc.output / name for job in svc.jobs() for name in job["outputs"] if name.endswith(".dcm")]
        assert len(results) == 2 * len(inputs)            # each: the waveform and its report page
        assert all(pacs.copies_of(r) == 1 for r in results)
        assert len(pacs.instances()) == len(results)
        assert not list((svc.output / "dead-letter").iterdir())
        assert "delivered to STOW-RS " + pacs.dicomweb_url in svc.log_text()
        assert PASSWORD not in (svc.log.read_text() + cfg.read_text())
        assert svc.stop() == 0
    finally:
        svc.kill9()
        pacs.stop()


def test_wrong_credentials_dead_letter_then_redeliver_once_the_secret_file_is_fixed(tmp_path, tiny_checkpoint,
                                                                                     shared_data):
    ecg = shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"
    secret = tmp_path / "stow.secret"
    secret.write_text("not-the-password\n")
    with Orthanc(tmp_path / "orthanc", dicomweb=True, users={USER: PASSWORD}) as pacs:
        cfg = write_config(tmp_path / "site", tiny_checkpoint,
                           pacs={"dicomweb": {"url": pacs.dicomweb_url,
                                              "auth": {"scheme": "basic", "username": USER,
                                                       "secret_file": str(secret)}}})
        with Service(cfg) as svc:
            assert storescu(svc.port, [ecg]).returncode == 0
            wait_for(lambda: svc.counts() == {"dead": 1}, 60, "the job to be dead-lettered at once")
            status = ecg_dicom("status", "--config", str(cfg))
            assert "HTTP 401 Unauthorized: credentials refused (check pacs.dicomweb.auth)" in status.stdout
            assert pacs.instances() == []
            secret.write_text(PASSWORD + "\n")
            sent = ecg_dicom("redeliver", "--config", str(cfg), "--dead-letter")
            assert sent.returncode == 0 and f"for STOW-RS {pacs.dicomweb_url}" in sent.stdout, sent.stderr
            wait_for(lambda: svc.counts() == {"done": 1}, 60, "the redelivered job to be delivered")
            assert len(pacs.instances()) == 2 and not list((svc.output / "dead-letter").iterdir())
