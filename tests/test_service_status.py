"""``ecg-dicom status`` and ``ecg-dicom redeliver`` as an integrator uses them (issue 11 items 7
and 8), against a running service, kill -9, and Orthanc as the PACS."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import synthetic_lead
from peers import (
    PACS_AET,
    Orthanc,
    Service,
    ecg_dicom,
    free_port,
    storescu,
    wait_for,
    write_config,
)
from pydicom import dcmread

pytestmark = pytest.mark.slow
MORTARA = ("dicom", "12lead", "mortara_eli250_waveform_ecg.dcm")


def status(config, exit_status: int = 0) -> tuple[str, dict]:
    text = ecg_dicom("status", "--config", str(config))
    data = ecg_dicom("status", "--config", str(config), "--json")
    assert (text.returncode, data.returncode) == (exit_status, exit_status), text.stdout + text.stderr
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
            text, data = status(cfg, exit_status=3)
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


def test_health_is_degraded_with_the_reason_while_the_pacs_is_down_and_ready_after_the_first_delivery(
        tmp_path, tiny_checkpoint):
    """Issue 20 item 4: /health said 200 "ready" for the 124 s the PACS was unreachable."""
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    pacs.stop()   # the PACS is down when the first result is ready
    http_port = free_port()
    cfg = write_config(tmp_path / "site", tiny_checkpoint, http={"host": "127.0.0.1", "port": http_port},
                       pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
    svc = Service(cfg).start()
    try:
        text, data = status(cfg)                       # nothing sent yet: ready
        assert data["health_status"] == "ready" and "200 ready" in text
        np.save(tmp_path / "rec.npy", synthetic_lead(seed=7))
        os.replace(tmp_path / "rec.npy", svc.watch / "rec.npy")
        wait_for(lambda: health(http_port)["status"] == "degraded", 60, "/health to say degraded")
        code, state = health_response(http_port)
        assert code == 200 and all(state["checks"].values())   # still taking inputs: a balancer keeps it
        reason = state["degraded"]["pacs"]
        assert f"delivery to {PACS_AET} at 127.0.0.1:{pacs.dicom_port} failing for" in reason
        assert "association not established" in reason
        text, data = status(cfg, exit_status=4)
        assert f"200 degraded: pacs: delivery to {PACS_AET}" in text and data["health_status"] == "degraded"
        assert f"delivery to TESTPACS at 127.0.0.1:{pacs.dicom_port} degraded" in svc.log_text()

        pacs.start()                                    # back: ready at the first delivery
        wait_for(lambda: svc.counts() == {"done": 1}, 60, "the result delivered")
        assert health_response(http_port) == (200, {"status": "ready", "checks": state["checks"]})
        status(cfg, exit_status=0)
        assert f"delivery to TESTPACS at 127.0.0.1:{pacs.dicom_port} works again after" in svc.log_text()
        assert svc.stop() == 0
        text, data = status(cfg, exit_status=3)        # stopped: NOT RUNNING, and its own exit status
        assert text.startswith("service:       NOT RUNNING") and data["health_status"] == "no answer"
    finally:
        svc.kill9()
        pacs.stop()


def health_response(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health(port: int) -> dict:
    return health_response(port)[1]


def test_monitor_reports_degraded_with_200_and_unavailable_with_503() -> None:
    from ecg_dicom.service.monitor import Monitor

    concern: dict[str, str | None] = {"pacs": None}
    checks = {"listener": lambda: True, "worker": lambda: True}
    monitor = Monitor("127.0.0.1", free_port(), checks, {"pacs": lambda: concern["pacs"]})
    assert monitor.health() == {"status": "ready", "checks": {"listener": True, "worker": True}}
    concern["pacs"] = "down"
    assert monitor.health() == {"status": "degraded", "checks": {"listener": True, "worker": True},
                                "degraded": {"pacs": "down"}}
    checks["worker"] = lambda: False
    assert monitor.health()["status"] == "unavailable"
    monitor.concerns["pacs"] = lambda: 1 / 0          # a concern that cannot run is raised, not hidden
    checks["worker"] = lambda: True
    assert monitor.health()["degraded"] == {"pacs": "its check failed to run"}
    monitor.server.server_close()


def test_the_readme_orthanc_entry_admits_our_ae_title_and_no_other(tmp_path, shared_data):
    """Issue 20 item 4: the README shows the PACS side of the connection (Orthanc's
    DicomModalities entry for our AE title). That entry, with Orthanc taking stores only
    from listed modalities, admits ECGDICOM's C-STORE and refuses any other caller."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    from peers import SERVICE_AET, dcmtk

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"In Orthanc's configuration.*?```json\n(.*?)```", readme, flags=re.S).group(1)
    entry = json.loads(block)
    [(aet, _host, port)] = entry["DicomModalities"].values()
    assert (aet, port) == (SERVICE_AET, 11112) and entry["DicomCheckCalledAet"] is True
    modalities = {name: [aet, "127.0.0.1", free_port()] for name in entry["DicomModalities"]}
    ecg = tmp_path / "x.dcm"
    shutil.copy(shared_data.joinpath(*MORTARA), ecg)
    with Orthanc(tmp_path / "orthanc", aet=entry["DicomAet"],
                 extra={"DicomModalities": modalities, "DicomAlwaysAllowStore": False}) as pacs:
        def send(calling: str) -> int:
            return subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", entry["DicomAet"], "127.0.0.1",
                                   str(pacs.dicom_port), str(ecg)], capture_output=True, timeout=60).returncode
        assert send("CART9") != 0 and pacs.instances() == []
        assert send(SERVICE_AET) == 0 and len(pacs.instances()) == 1
