"""The service image (``make image``: localhost/ecg-dicom:latest) run as an operator runs it:
our own site.yaml mounted at /config/site.yaml, a host folder as the /data volume, real DCMTK
peers (echoscu, storescu) talking to it, ``podman stop`` at the end.

Runs where podman runs and the image is there (``make test`` builds it first where podman
runs); skipped elsewhere, saying why. The container shares the host's network
(``--network host``) and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from peers import CART_AET, SERVICE_AET, dciodvfy_errors, echoscu, free_port, stored_ok, storescu, wait_for
from pydicom import dcmread

from ecg_dicom.dicom.reader import read_dicom_lead

pytestmark = pytest.mark.slow

IMAGE = "localhost/ecg-dicom:latest"
MAX_IMAGE_BYTES = 1.5e9  # the lean install (no torch) on python:3.11-slim or Debian's python3
CONTAINER_USER = "10001:10001"
TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman with the repository's containers.conf unless CONTAINERS_CONF names another
    (as `make` does)."""
    env = {**os.environ}
    env.setdefault("CONTAINERS_CONF", str(REPO_ROOT / "config" / "containers.conf"))
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, check=check)


def _why_not() -> str | None:
    """Why the container cannot be tested here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (make system-deps, as root)"
    info = podman("info", check=False, timeout=60)
    if info.returncode != 0:
        return f"podman cannot run here: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        return f"no image {IMAGE} here (make image builds it)"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    why = _why_not()
    if why:
        pytest.skip(why)
    return IMAGE


def test_the_image_is_lean_and_runs_as_a_user_without_torch(image: str) -> None:
    size, user = podman("image", "inspect", "--format", "{{.Size}} {{.Config.User}}", image).stdout.split()
    assert int(size) <= MAX_IMAGE_BYTES and user == CONTAINER_USER
    probe = podman("run", "--rm", "--network", "host", image, "sh", "-c",
                   "id -u; python -c 'import importlib.util as u; print(u.find_spec(\"torch\"))'")
    assert probe.stdout.split() == ["10001", "None"], probe.stdout + probe.stderr


def _site_yaml(folder: Path, port: int) -> Path:
    """Our own site.yaml for the container (not config/docker.yaml): loopback, the test's port."""
    path = folder / "site.yaml"
    folder.mkdir(parents=True)
    path.write_text(yaml.safe_dump({
        "ae_title": SERVICE_AET,
        "listen": {"host": "127.0.0.1", "port": port, "timeout_s": 10},
        "allowed_callers": [CART_AET],
        "input_lead": "I",
        "folders": {"watch": "/data/inbox", "output": "/data/outbox", "work": "/data/work"},
        "worker": {"batch_size": 8, "max_wait_s": 0.1},
    }))
    return path


def test_the_container_answers_echo_turns_a_c_store_into_a_12_lead_result_on_data_and_stops_with_0(
        image: str, shared_data: Path, tmp_path: Path) -> None:
    port = free_port()
    config = _site_yaml(tmp_path / "config", port)
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the container's user 10001 writes its folders here
    name = f"ecg-dicom-test-{os.getpid()}-{port}"
    podman("run", "-d", "--name", name, "--network", "host", "-v", f"{data}:/data",
           "-v", f"{config}:/config/site.yaml:ro", image)
    try:
        wait_for(lambda: echoscu(port), 180, "the container to answer C-ECHO", interval=1.0)

        inputs = sorted((shared_data / "dicom" / "12lead").glob("*.dcm"))
        assert inputs
        result = storescu(port, inputs)
        assert result.returncode == 0, result.stderr
        assert len(stored_ok(result.stdout + result.stderr)) == len(inputs)
        for path in inputs:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            dcm, npy = data / "outbox" / f"{uid}.dcm", data / "outbox" / f"{uid}.npy"
            wait_for(lambda: dcm.exists() and npy.exists(), 180, f"the result of {path.name} under /data/outbox")
            leads = np.load(npy, allow_pickle=False)
            assert leads.shape == (12, read_dicom_lead(path, "I").signal_uv.size) and np.isfinite(leads).all()
            assert dciodvfy_errors(dcm) == []
            ds = dcmread(dcm)
            assert ds.SOPClassUID == TWELVE_LEAD
            assert sum(int(g.NumberOfWaveformChannels) for g in ds.WaveformSequence) == 12

        podman("stop", "-t", "60", name, timeout=120)
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.split()
        assert state == ["exited", "0"], podman("logs", name, check=False).stderr[-3000:]
        assert "stopped; waiting=0" in podman("logs", name, check=False).stderr
    finally:
        podman("rm", "-f", name, check=False)
