"""The live accuracy monitor (issue 21 item 4) and sources that already hold 12 measured leads
(item 5).

End to end: real 12-lead DICOM ECGs (the two Mortara ELI 250 files, PTB-XL records written as
a cart's 12-lead object, one of them with a near-isoelectric lead I) sent by a DCMTK cart to
``ecg-dicom serve`` (shipped models, ``input_lead: auto``) with Orthanc as PACS: per-lead
figures in each result's .json equal to ``ecg-dicom evaluate`` on the same records within
0.005, on /metrics by device model, in ``status --accuracy``; nothing of theirs at the PACS
by default, a one-lead input delivered beside them; with ``deliver_when_source_complete``
they reach the PACS saying so.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from peers import Orthanc, Service, dciodvfy_errors, ecg_dicom, free_port, storescu, wait_for, write_config
from pydicom import dcmread
from sources import write_12lead_source
from test_lead_choice import near_isoelectric_lead_i

from ecg_dicom.config import AccuracyMonitor as MonitorSettings
from ecg_dicom.core.accuracy import MODEL_CARD_R
from ecg_dicom.dicom.reader import read_dicom_leads
from ecg_dicom.leads import LEADS_12
from ecg_dicom.queue import JobQueue
from ecg_dicom import metrics
from ecg_dicom.service.accuracy import WARN_EVERY_S, AccuracyMonitor, device_model, summarize
from ecg_dicom.service.monitor import Monitor
from ecg_dicom.training.data import read_wfdb_record

PTBXL = ("records500/00000/00009_hr", "records500/01000/01017_hr", "records500/00000/00002_hr")
CARTS = ("dicom/12lead/mortara_eli250_waveform_ecg.dcm", "dicom/12lead/ecgtoolkit_example_eli250.dcm")


def figures(r: float) -> dict[str, dict]:
    return {lead: {"r": r, "rmse_uv": 100.0} for lead in ("II", "V1")}


def test_monitor_says_degraded_below_the_card_and_warns_once_a_day(tmp_path, caplog):
    queue = JobQueue(tmp_path / "q.sqlite3")
    now = [1_000_000.0]
    monitor = AccuracyMonitor(queue, MonitorSettings(margin=0.1, window=4), clock=lambda: now[0])
    card = MODEL_CARD_R["I"]["V1"]
    with caplog.at_level(logging.WARNING, "ecg_dicom.accuracy"):
        for job in range(3):                      # fewer than the window: no verdict yet
            monitor.record(job, "ELI250", "I", figures(card - 0.3))
        assert monitor.degraded() == {}
        monitor.record(3, "ELI250", "I", figures(card - 0.3))
        assert set(monitor.degraded()) == {"II", "V1"}
        assert monitor.degraded()["V1"]["n"] == 4
        now[0] += 3600
        monitor.record(4, "MAC5500", "I", figures(card - 0.3))
        assert len([r for r in caplog.records if "below the model card" in r.getMessage()]) == 1  # once a day
        now[0] += WARN_EVERY_S
        monitor.record(5, "MAC5500", "I", figures(card - 0.3))
        assert len([r for r in caplog.records if "below the model card" in r.getMessage()]) == 2
    for job in range(6, 9):                       # the rolling median recovers
        monitor.record(job, "MAC5500", "I", figures(card))
    assert monitor.degraded() == {}
    # within the margin is not degraded; a record against the lead-II card is held to that card
    for job in range(9, 13):
        monitor.record(job, "MAC5500", "II", {"V1": {"r": MODEL_CARD_R["II"]["V1"] - 0.05, "rmse_uv": 90.0}})
    assert monitor.degraded() == {}
    table = summarize(queue.accuracy_rows())
    assert set(table) == {"ELI250", "MAC5500"} and table["ELI250"]["V1"]["n"] == 4
    assert table["MAC5500"]["V1"]["trend"] > 0            # worse records first, better ones later
    assert table["ELI250"]["V1"]["p10_r"] == pytest.approx(card - 0.3)


def test_recording_figures_does_not_scan_the_whole_history(tmp_path):
    """Every job records its figures and the monitor re-checks the last ``window`` of each
    lead: that must read through an index, not every row kept (59 ms per job at 50,000 jobs
    kept, growing with every job, before)."""
    queue = JobQueue(tmp_path / "queue.db")
    try:
        plan = " ".join(str(row[-1]) for row in queue._db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM accuracy WHERE lead = ? ORDER BY at DESC, job_id DESC LIMIT ?",
            ("V1", 50)))
        assert "accuracy_lead_at" in plan and "SCAN accuracy" not in plan.replace("USING INDEX", ""), plan
        monitor = AccuracyMonitor(queue, MonitorSettings(window=3, margin=0.1), card={"I": {"V1": 0.9}})
        statements: list[str] = []
        queue._db.set_trace_callback(statements.append)
        monitor.record(1, "cart", "I", figures(0.5))
        assert not [s for s in statements if "DISTINCT" in s.upper()], statements
    finally:
        queue.close()


def test_health_says_degraded_over_http(tmp_path):
    queue = JobQueue(tmp_path / "q.sqlite3")
    monitor = AccuracyMonitor(queue, MonitorSettings(margin=0.1, window=2))
    http = Monitor("127.0.0.1", free_port(), {"worker": lambda: True}, degraded=monitor.degraded).start()
    url = f"http://127.0.0.1:{http.server.server_address[1]}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as rsp:
            assert rsp.status == 200 and json.loads(rsp.read())["status"] == "ready"
        for job in range(2):
            monitor.record(job, "ELI250", "I", figures(0.2))
        with urllib.request.urlopen(url, timeout=5) as rsp:
            body = json.loads(rsp.read())
        assert rsp.status == 200 and body["status"] == "degraded"
        assert body["accuracy"]["V1"]["median_r"] == 0.2 and body["accuracy"]["V1"]["card_r"] == MODEL_CARD_R["I"]["V1"]
    finally:
        http.stop()


def test_device_label_is_the_model_name_only():
    assert device_model({"ManufacturerModelName": "ELI 250\n\x1b[2J", "PatientName": "Doe^Jane"}) == "ELI 250[2J"
    assert device_model({}) == "unknown" and device_model(None) == "unknown"
    metrics.accuracy_observed("ELI 250", figures(0.9))
    text = metrics.exposition().decode()
    assert 'ecg_dicom_accuracy_r_count{device_model="ELI 250",lead="V1"}' in text
    assert "ecg_dicom_accuracy_rmse_uv_bucket" in text


def _npy_folder(base: Path, leads: dict[str, np.ndarray], name: str) -> None:
    base.mkdir(parents=True, exist_ok=True)
    np.save(base / f"{name}.npy", np.stack([leads[lead] for lead in LEADS_12]))


def _evaluate(folder: Path, fs: float, input_lead: str, tmp_path: Path) -> dict[str, dict]:
    """``ecg-dicom evaluate`` on a folder of (12, N) µV arrays: record name -> lead -> r, RMSE."""
    out = tmp_path / f"{folder.name}.json"
    run = ecg_dicom("evaluate", str(folder), "--fs", f"{fs:g}", "--input-lead", input_lead, "--json", str(out),
                    timeout=600)
    assert run.returncode == 0, run.stderr
    return {rec["name"].split("/")[-1]: {lead: v["model"] for lead, v in rec["leads"].items()}
            for rec in json.loads(out.read_text())["records"]}


def _site(folder: Path, **overrides) -> Path:
    """A test site.yaml (tests/peers.py) on the shipped models."""
    path = write_config(folder, Path("shipped"), **overrides)
    config = yaml.safe_load(path.read_text())
    del config["checkpoint"]
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as pacs:
        yield pacs


@pytest.mark.slow
def test_service_monitor_equals_evaluate_and_keeps_12lead_sources_local(shared_data, tmp_path, orthanc):
    src = tmp_path / "sources"
    src.mkdir()
    sources = [shared_data / c for c in CARTS]
    for k, record in enumerate(PTBXL):
        rec = read_wfdb_record(shared_data / "ecg12" / "ptbxl" / f"{record}.hea")
        sources.append(write_12lead_source(shared_data, rec.leads[:, :5000], src / f"ptbxl{k}.dcm", f"PTBXL-{k}",
                                           model_name="PTB-XL", manufacturer="Schiller"))
    iso = read_wfdb_record(shared_data / "ecg12/ptbxl/records500/00000/00222_hr.hea").leads[:, :5000]
    sources.append(write_12lead_source(shared_data, near_isoelectric_lead_i(iso), src / "iso.dcm", "ISO-1",
                                       model_name="PTB-XL", manufacturer="Schiller"))
    cfg = _site(tmp_path / "site", input_lead="auto",
                       pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
                       http={"host": "127.0.0.1", "port": free_port()}, deliver_when_source_complete=None,
                       accuracy_monitor={"margin": 0.1, "window": 50})
    before = set(orthanc.instances())
    service = Service(cfg).start(timeout=180)
    try:
        lead = read_wfdb_record(shared_data / "ecg12/ptbxl/records500/00000/00009_hr.hea").leads[0]
        np.save(service.watch / "one_lead.npy", lead.astype(np.float32))     # a one-lead source: delivered
        sent = storescu(service.port, sources)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: service.counts().get("done", 0) == len(sources) + 1, 300, "every job done")
        jobs = {job["source_name"]: job for job in service.jobs()}
        assert all(job["state"] == "done" for job in jobs.values())
        # only the one-lead input reached the PACS (its waveform and its page)
        new = set(orthanc.instances()) - before
        assert len(new) == 2
        assert all("source has all 12" not in str(orthanc.get(f"/instances/{i}/simplified-tags").get(
            "SeriesDescription", "")) for i in new)
        assert service.log_text().count("kept locally: the source holds all 12 measured leads") == len(sources)

        # the figures of every 12-lead source equal evaluate's on the same records
        results = {}
        for meta_path in service.output.glob("*.json"):
            meta = json.loads(meta_path.read_text())
            if "accuracy" in meta:
                results[meta["PatientID"]] = meta
        assert len(results) == len(sources)
        folders: dict[tuple[float, str], Path] = {}
        for path in sources:
            ds = dcmread(path)
            meta = results[str(ds.PatientID)]
            assert meta["source_complete"] is True and meta["input_lead"] == ("II" if path.name == "iso.dcm" else "I+II")
            fs = float(meta["fs"])
            folder = folders.setdefault((fs, meta["input_lead"]), tmp_path / f"eval_{fs:g}_{meta['input_lead']}")
            _npy_folder(folder, read_dicom_leads(path), path.stem)
        compared = 0
        for (fs, input_lead), folder in folders.items():
            truth = _evaluate(folder, fs, input_lead, tmp_path)
            for path in sources:
                meta = results[str(dcmread(path).PatientID)]
                if path.stem not in truth or meta["input_lead"] != input_lead:
                    continue
                expected = {lead: v for lead, v in truth[path.stem].items() if lead not in ("III", "aVR", "aVL", "aVF")}
                assert set(meta["accuracy"]) == set(expected), path.name
                for lead, v in expected.items():
                    assert abs(meta["accuracy"][lead]["r"] - v["r"]) <= 0.005, (path.name, lead)
                    assert abs(meta["accuracy"][lead]["rmse_uv"] - v["rmse_uv"]) <= 0.5, (path.name, lead)
                    compared += 1
        assert compared >= 6 * len(sources)

        # /metrics: by lead and device model; /health ready (fewer records than the window)
        port = yaml.safe_load(Path(cfg).read_text())["http"]["port"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'ecg_dicom_accuracy_r_count{device_model="PTB-XL",lead="V1"} 4.0' in text
        assert 'ecg_dicom_accuracy_r_count{device_model="el250",lead="V1"} 1.0' in text
        assert "PTBXL-" not in text and "Record^" not in text          # no patient on /metrics
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        assert health["status"] == "ready"

        # ecg-dicom status --accuracy: n, median and p10 r per lead and device model
        out = ecg_dicom("status", "--config", str(cfg), "--accuracy", "--since", "7d", "--json")
        assert out.returncode == 0, out.stderr
        table = json.loads(out.stdout)["devices"]
        assert set(table) == {"PTB-XL", "el250", "ELI250"}
        assert table["PTB-XL"]["V1"]["n"] == 4   # 3 records from I and II together, the iso one from II
        assert "II" not in table["PTB-XL"]   # the other three from I and II together: II measured, not scored
        assert table["PTB-XL"]["V1"]["p10_r"] <= table["PTB-XL"]["V1"]["median_r"]
        printed = ecg_dicom("status", "--config", str(cfg), "--accuracy").stdout
        assert "device model PTB-XL:" in printed and "median r" in printed
    finally:
        assert service.stop() == 0

    # a site that asks for it: the 12-lead source's result reaches the PACS, saying so
    cfg2 = _site(tmp_path / "site2",
                        pacs={"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
                        deliver_when_source_complete=True)
    service = Service(cfg2).start(timeout=180)
    try:
        before = set(orthanc.instances())
        assert storescu(service.port, [shared_data / CARTS[0]]).returncode == 0
        wait_for(lambda: len(set(orthanc.instances()) - before) == 2, 120, "the waveform and the page at the PACS")
        for instance in set(orthanc.instances()) - before:
            tags = orthanc.get(f"/instances/{instance}/simplified-tags")
            assert tags["SeriesDescription"].startswith("AI ") and "source has all 12 leads" in tags["SeriesDescription"]
            received = orthanc.download(instance, tmp_path / f"{instance}.dcm")
            assert dciodvfy_errors(received) == []
        pdf = next(service.output.glob("*.pdf"))
        page = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              check=True).stdout
        assert "Source holds all 12 measured leads" in page
    finally:
        assert service.stop() == 0


@pytest.mark.parametrize("extra, message", [
    ({"accuracy_monitor": {"margin": 1.5}}, "accuracy_monitor.margin: "),
    ({"accuracy_monitor": {"window": 0}}, "accuracy_monitor.window: "),
    ({"accuracy_monitor": {"windows": 5}}, "unknown key 'accuracy_monitor.windows'"),
    ({"deliver_when_source_complete": "yes"}, "deliver_when_source_complete: "),
    ({"input_lead": "III"}, "input_lead: "),
    ({"input_lead": "auto", "checkpoint": "ck.pt"}, "checkpoint: a checkpoint is a model for one lead"),
])
def test_bad_settings_fail_at_start_naming_the_key(tmp_path, extra, message):
    from ecg_dicom.config import load_config
    from ecg_dicom.errors import ConfigError

    (tmp_path / "ck.pt").write_bytes(b"x")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"ae_title": "ECG", "folders": {"watch": "i", "output": "o", "work": "w"},
                                    **extra}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


def test_good_settings_load(tmp_path):
    from ecg_dicom.config import load_config

    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"ae_title": "ECG", "folders": {"watch": "i", "output": "o", "work": "w"},
                                    "input_lead": "auto", "deliver_when_source_complete": True,
                                    "accuracy_monitor": {"margin": 0.05, "window": 20}}))
    settings = load_config(path)
    assert settings.input_lead == "auto" and settings.deliver_when_source_complete is True
    assert (settings.accuracy_monitor.margin, settings.accuracy_monitor.window) == (0.05, 20)


def test_a_checkpoint_without_a_card_is_measured_not_judged(tmp_path):
    queue = JobQueue(tmp_path / "q.sqlite3")
    monitor = AccuracyMonitor(queue, MonitorSettings(margin=0.1, window=2), card={})
    for job in range(3):
        monitor.record(job, "ELI250", "I", figures(0.1))
    assert monitor.degraded() == {} and len(queue.accuracy_rows()) == 6
