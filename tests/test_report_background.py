"""The page is drawn in a child process beside the worker's other writes (issue 20 item 8):
the same bytes as drawn in-process, a dead child costs no page, and no child outlives the
service, ``kill -9`` included."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from peers import Service, child_pids, storescu, wait_for, write_config

from ecg_dicom.report.background import PageRenderer
from ecg_dicom.report.page import ReportData, render

MORTARA = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"


def page_data(seed: int = 0) -> ReportData:
    rng = np.random.default_rng(seed)
    t = np.arange(5000) / 500.0
    leads = 800 * np.sin(2 * np.pi * 1.2 * t)[None, :] * rng.uniform(0.3, 1.0, (12, 1)) + rng.normal(0, 20, (12, 5000))
    return ReportData(leads_uv=leads, fs=500.0, input_lead="I", model_name="test model", model_version="t-1",
                      header={"PatientName": "Иванов^Пётр", "PatientID": "X1"})


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_page_from_the_child_is_the_page_drawn_here_and_a_killed_child_costs_no_page():
    renderer = PageRenderer().start()
    try:
        first = renderer.pids()
        assert first and all(alive(pid) for pid in first) and os.getpid() not in first
        data = page_data()
        expected = render(data, "pdf", "A4")
        assert renderer.submit(data, "A4").result() == expected
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: not alive(first[0]), 10, "the child to die")
        assert renderer.submit(data, "A4").result() == expected  # drawn in-process meanwhile
        assert renderer.submit(page_data(1), "A4").result() == render(page_data(1), "pdf", "A4")
        assert renderer.pids() and renderer.pids() != first, "a new child was started"
    finally:
        renderer.close()


@pytest.mark.slow
def test_the_service_draws_pages_in_a_child_that_dies_with_it(tmp_path, shared_data, tiny_checkpoint):
    service = Service(write_config(tmp_path / "site", tiny_checkpoint)).start(timeout=180)
    try:
        assert "report pages drawn in a separate process" in service.log_text()
        out = storescu(service.port, [shared_data / MORTARA])
        assert out.returncode == 0, out.stderr[-500:]
        wait_for(lambda: list(service.output.glob("*.pdf")), 120, "the page")
        children = child_pids(service.proc.pid)
        assert children, "the page drawing process"
        service.kill9()
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "the service's children to end with it")
    finally:
        service.kill9()


def test_a_stopped_service_stops_its_page_process(tmp_path, tiny_checkpoint):
    service = Service(write_config(tmp_path / "site", tiny_checkpoint)).start(timeout=180)
    try:
        children = child_pids(service.proc.pid)
        assert children
        assert service.stop() == 0
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "the page process to stop")
    finally:
        service.kill9()
