"""Shared fixtures: where the real data lives, a tiny valid checkpoint, synthetic leads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_dicom.core.checkpoint import Preprocessing, save_checkpoint
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.model import BiLSTMAttentionModel, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repo into a folder with shared/ beside it, as on the developers' machines;
# ECG_DICOM_TEST_DATA names the data folder where it lies elsewhere.
SHARED_DATA = Path(os.environ.get("ECG_DICOM_TEST_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()
TINY_CONFIG = ModelConfig(stem_channels=8, hidden=8, lstm_layers=1, heads=2, dropout=0.0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; the tests that need real records fail (not skip) without it."""
    assert SHARED_DATA.is_dir(), (f"real test data not found at {SHARED_DATA}: put the data folder there (the "
                                  "clone beside shared/, as in the README's Quick start) or set ECG_DICOM_TEST_DATA")
    return SHARED_DATA


# A few PTB-XL records in PTB-XL's own layout (records100/ and records500/ buckets, both header
# styles: original PTB-XL and the PhysioNet Challenge rewrites) plus one flat Challenge copy.
PTBXL_SAMPLE = ("records500/00000/00002_hr", "records500/01000/01017_hr", "records100/00000/00501_lr",
                "records100/01000/01001_lr", "HR06000")


@pytest.fixture(scope="session")
def ptbxl_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/ptbxl/`` holding :data:`PTBXL_SAMPLE` (symlinks) and the metadata table."""
    root = tmp_path_factory.mktemp("data") / "ptbxl"
    source = shared_data / "ecg12/ptbxl"
    for record in PTBXL_SAMPLE:
        for path in source.glob(f"{record}.*"):
            target = root / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    (root / "ptbxl_database_ids_1-500.csv").symlink_to(source / "ptbxl_database_ids_1-500.csv")
    return root


def make_tiny_checkpoint(path: Path, input_lead: str = "I") -> Path:
    """A small randomly initialised but valid checkpoint (fast to load and run)."""
    torch.manual_seed(0)
    model = BiLSTMAttentionModel(TINY_CONFIG)
    return save_checkpoint(path, model, input_lead, "tiny-test-0", Preprocessing(),
                           {"data": "none (random weights for tests)"})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny lead-I checkpoint."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_I.pt", "I")


@pytest.fixture(scope="session")
def tiny_checkpoint_ii(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny lead-II checkpoint."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_II.pt", "II")


@pytest.fixture(scope="session")
def tiny_reconstructor(tiny_checkpoint: Path) -> Reconstructor:
    return Reconstructor.from_checkpoint(tiny_checkpoint, input_lead="I", precision="fp32")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc as the PACS, one per test module (tests/peers.py)."""
    from peers import Orthanc

    with Orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, pacs):
    """``ecg-dicom serve`` (tiny model) delivering to :func:`pacs`, one per test module."""
    from peers import PACS_AET, Service, write_config

    cfg = write_config(tmp_path_factory.mktemp("site"), tiny_checkpoint,
                       pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
    svc = Service(cfg).start()
    yield svc
    assert svc.stop() == 0


def synthetic_lead(seconds: float = 10.0, fs: float = 500.0, seed: int = 0) -> np.ndarray:
    """(N,) float32 µV: a crude ECG-like lead (QRS spikes on a T-ish wave, ~1.2 mV p2p)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    beat = (t % 0.8)
    qrs = 1000 * np.exp(-((beat - 0.2) / 0.012) ** 2)
    twave = 250 * np.exp(-((beat - 0.45) / 0.05) ** 2)
    return (qrs + twave - 150 + rng.normal(0, 10, t.size)).astype(np.float32)


@pytest.fixture
def site(tmp_path, shared_data):
    """A job store with one job whose result (a real 12-lead ECG file) awaits delivery:
    (folders, queue, job id)."""
    import shutil

    from ecg_dicom.config import Folders
    from ecg_dicom.queue import JobQueue, new_key

    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "work")
    folders.output.mkdir()
    shutil.copy(shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm", folders.output / "r.dcm")
    queue = JobQueue(folders.queue_db)
    job_id = queue.add(new_key(), "r", "scp", "spooled")
    queue.claim(1)
    queue.processed(job_id, ["r.npy", "r.dcm"], deliver=True)
    yield folders, queue, job_id
    queue.close()
