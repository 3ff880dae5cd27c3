"""An hour-long input in the running service (issue 11 items 5 and 6), against real peers:
it does not hold a short ECG from a cart back, its progress is logged, and SIGTERM in the
middle of it is a clean stop (exit 0, no abort) after which it is done at the next start."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from conftest import synthetic_lead
from peers import Service, storescu, wait_for, write_config
from pydicom import dcmread

from ecg_dicom.core.checkpoint import Preprocessing, save_checkpoint
from ecg_dicom.core.model import BiLSTMAttentionModel, ModelConfig

pytestmark = pytest.mark.slow
HOUR_S = 3600.0
# big enough that an hour takes seconds (45 forward batches of 32 windows), small enough for CI
MEDIUM = ModelConfig(stem_channels=32, hidden=48, lstm_layers=2, heads=2, dropout=0.0)


@pytest.fixture(scope="module")
def medium_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "medium.pt", BiLSTMAttentionModel(MEDIUM), "I",
                           "medium-test-0", Preprocessing(), {"data": "none (random weights for tests)"})


def job_named(service: Service, source_name: str) -> dict | None:
    return next((j for j in service.jobs() if j["source_name"] == source_name), None)


def test_an_hour_long_input_holds_nothing_back_and_sigterm_in_its_middle_is_clean(
        tmp_path, medium_checkpoint, shared_data):
    cfg = write_config(tmp_path / "site", medium_checkpoint)
    svc = Service(cfg)
    svc.start()
    try:
        hour = synthetic_lead(seconds=HOUR_S, seed=7)
        np.save(tmp_path / "hour.npy", hour)
        os.replace(tmp_path / "hour.npy", svc.watch / "hour.npy")            # the safe way to drop a file
        wait_for(lambda: "long input (3600 s of ECG" in svc.log_text(), 60, "the hour to be taken in hand")

        # a 10 s ECG from a cart meanwhile is not held back by the hour
        ecg = shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"
        assert storescu(svc.port, [ecg]).returncode == 0
        uid = str(dcmread(ecg, stop_before_pixels=True).SOPInstanceUID)
        wait_for(lambda: (job_named(svc, f"{uid}.dcm") or {}).get("state") == "done", 60, "the short ECG")
        assert job_named(svc, "hour.npy")["state"] == "processing"

        # SIGTERM in the middle of the hour: exit 0, at once, no abort
        wait_for(lambda: "% (" in svc.log_text(), 60, "progress of the hour to be logged")
        log_before_stop = len(svc.log_text())
        assert svc.stop(timeout=15) == 0
        stop_log = svc.log_text()[log_before_stop:]
        assert "starts again at the next start" in stop_log
        for abort in ("terminate called", "Aborted", "Traceback"):
            assert abort not in svc.log_text()
        assert job_named(svc, "hour.npy")["state"] in ("processing", "waiting")

        # the next start does it
        svc.start()
        wait_for(lambda: (job_named(svc, "hour.npy") or {}).get("state") == "done", 240, "the hour to be done")
        job = job_named(svc, "hour.npy")
        leads = np.load(svc.output / f"{job['stem']}.npy", mmap_mode="r")
        assert leads.shape == (12, hour.size)
        np.testing.assert_allclose(leads[0, :1000], hour[:1000], atol=1e-3)
        dicom_parts = [name for name in job["outputs"] if re.fullmatch(r".*_\d{3}\.dcm", name)]
        assert len(dicom_parts) == 110 and all((svc.output / name).is_file() for name in dicom_parts)
        assert re.search(r": [1-9][0-9]% \(\d+ of 1439 windows\)", svc.log_text())
        assert "long input reconstructed" in svc.log_text()
        assert svc.stop() == 0
    finally:
        svc.kill9()
