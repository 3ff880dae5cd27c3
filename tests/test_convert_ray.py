"""`ecg-dicom convert --engine ray` with a real local Ray: the same results as the
single-process engine, reasons for bad files, and a resume after the driver is killed.

One Ray instance (2 CPUs) serves the whole module; only the kill test starts its own, in the
`ecg-dicom` process it kills. Marked `ray` (deselect with -m "not ray").
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import synthetic_lead

from ecg_dicom.convert.archive import find_inputs, is_done
from ecg_dicom.cli import main
from ecg_dicom.convert.batch import ConvertSettings, convert_folder
from ecg_dicom.convert.ray_engine import BatchConverter, convert_archive, ray_session
from ecg_dicom.core.inference import Reconstructor

pytestmark = pytest.mark.ray

DICOM_SOURCES = ("dicom/12lead/mortara_eli250_waveform_ecg.dcm",
                 "dicom/hemodynamic/ge_maclab_12lead_in_hemodynamic_sop.dcm",
                 "dicom/non_waveform/CT_small.dcm", "dicom/malformed/no_meta.dcm")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance with 2 CPUs for the module, stopped (and its files removed) after."""
    import ray

    with ray_session(num_cpus=2) as temp:
        assert ray.is_initialized() and temp is not None and temp.is_dir()
        assert temp.parent.stat().st_mode & 0o777 == 0o700  # Ray's own folder is 0777: ours around it is not
        assert list(temp.glob("session_*/logs"))  # Ray writes there
        yield temp
    assert not ray.is_initialized() and not temp.parent.exists()


def small_tree(root: Path, shared_data: Path) -> Path:
    inp = root / "in"
    for sub in ("ward1", "ward2/holter", "carts"):
        (inp / sub).mkdir(parents=True)
    for seed in range(3):
        np.save(inp / "ward1" / f"ecg{seed}.npy", synthetic_lead(seconds=10 + 5 * seed, seed=seed))
    np.save(inp / "ward2" / "holter" / "long.npy", synthetic_lead(seconds=120, seed=7))
    np.save(inp / "ward2" / "nan.npy", np.r_[synthetic_lead()[:100], np.nan, synthetic_lead()[101:]])
    (inp / "ward2" / "garbage.npy").write_bytes(b"this is not numpy")
    for i, source in enumerate(DICOM_SOURCES):
        shutil.copy(shared_data / source, inp / "carts" / f"cart{i}.dcm")
    (inp / "ward1" / "ecg1.json").write_text('{"fs": 500}')
    (inp / "ward1" / "stray.json").write_text("{}")
    return inp


def result_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_ray_results_equal_the_single_process_engine(ray_instance, shared_data, tiny_checkpoint, tmp_path):
    inp = small_tree(tmp_path, shared_data)
    reconstructor = Reconstructor.from_checkpoint(tiny_checkpoint)
    settings = ConvertSettings(output_format="both", confidence=True)
    single = convert_folder(inp, tmp_path / "single", reconstructor, output_format="both", confidence=True)
    ray_report = convert_archive(inp, tmp_path / "ray", settings, tiny_checkpoint, num_workers=2,
                                 files_per_batch=2)

    assert set(ray_report.written) == set(single.written) and ray_report.failed == single.failed
    assert set(single.failed) == {"ward2/nan", "ward2/garbage", "carts/cart2", "carts/cart3"}
    files = result_files(tmp_path / "single")
    assert files == result_files(tmp_path / "ray")
    for name in files:
        a, b = tmp_path / "single" / name, tmp_path / "ray" / name
        if name.endswith(".npy"):
            x, y = np.load(a), np.load(b)
            assert x.shape == y.shape and np.abs(x - y).max() <= 0.5, name
        elif name.endswith(".dcm"):
            x, y = pydicom.dcmread(a), pydicom.dcmread(b)
            for uid in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
                assert x[uid].value == y[uid].value, (name, uid)
        elif name.endswith(".reason.txt"):
            assert a.read_text() == b.read_text()


def test_cli_engine_ray_exit_status_and_reasons(ray_instance, shared_data, tiny_checkpoint, tmp_path,
                                                     capsys):
    inp = small_tree(tmp_path, shared_data)
    out = tmp_path / "out"
    args = ["convert", str(inp), str(out), "--checkpoint", str(tiny_checkpoint), "--engine", "ray",
            "--num-workers", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "skipped ward2/nan: 1 of 5000 samples are NaN" in err
    assert "ward1/stray.json: a sidecar with no stray.npy" in err and "ecg1.json" not in err
    assert "converted 6, rejected 4, skipped as done 0" in err
    assert "CT Image Storage" in (out / "carts" / "cart2.reason.txt").read_text()
    assert (out / "ward2" / "garbage.reason.txt").read_text().strip()
    assert np.load(out / "ward2" / "holter" / "long.npy").shape == (12, 60_000)

    good = ["convert", str(inp / "ward1"), str(tmp_path / "good"), "--checkpoint", str(tiny_checkpoint),
            "--engine", "ray"]
    assert main(good) == 0


def session_members(sid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in session ``sid`` (/proc/PID/stat fields 3 and 6)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid: int, timeout: float = 30.0) -> None:
    """SIGKILL every process of the session this test started, until none is left."""
    deadline = time.monotonic() + timeout
    while (pids := session_members(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    assert not session_members(sid), "Ray processes outlived the kill"


def test_resume_after_the_driver_is_killed_converts_only_what_is_missing(ray_instance, tmp_path):
    """Kill -9 a real `ecg-dicom convert --engine ray` (own local Ray, shipped model) half-way."""
    inp = tmp_path / "in"
    for i in range(24):
        folder = inp / f"batch{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"ecg{i:02d}.npy", synthetic_lead(seed=i))
    out = tmp_path / "out"
    ray_temp = Path(tempfile.mkdtemp(prefix="ecg-ray-"))  # short: Ray's socket paths must fit 107 bytes
    cmd = [sys.executable, "-m", "ecg_dicom", "convert", str(inp), str(out), "--engine", "ray",
           "--num-workers", "2", "--batch-size", "2", "--ray-temp-dir", str(ray_temp)]
    env = dict(os.environ)
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_ADDRESS"):  # not this module's instance
        env.pop(key, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.rglob(".*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None:
            pytest.fail(f"convert ended before it could be killed:\n{proc.communicate()[1].decode()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)  # the driver, half-way
    finally:
        kill_session(proc.pid)  # and every Ray process it started (workers have process groups of their own)
        stderr = proc.communicate(timeout=60)[1].decode(errors="replace")
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]

    items = find_inputs(inp, out)
    settings = ConvertSettings().marker_settings(Reconstructor.from_checkpoint(None, "I", precision="fast"))
    done_before = {item.name for item in items if is_done(item, settings)}
    assert 0 < len(done_before) < len(items), "the kill did not land half-way"

    report = convert_archive(inp, out, ConvertSettings(), None, num_workers=2, files_per_batch=2)
    assert set(report.done) == done_before
    assert set(report.written) == {item.name for item in items} - done_before and not report.failed
    assert all(is_done(item, settings) for item in items)
    assert not list(out.rglob("*.part"))
    for item in items:
        assert np.load(item.out_dir / f"{item.stem}.npy").shape == (12, 5000)


class DiesOnCrashInputs(BatchConverter):
    """A worker whose process dies (as on a crash in native code) on a batch holding a "crash" input."""

    def __call__(self, batch):
        if any("crash" in str(name) for name in batch["name"]):
            os._exit(3)
        return super().__call__(batch)


def test_a_batch_whose_worker_keeps_dying_is_reported_and_the_job_goes_on(ray_instance, tiny_checkpoint,
                                                                          tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a", "b", "crash", "d", "e", "f"):
        np.save(inp / f"{name}.npy", synthetic_lead())
    out = tmp_path / "out"
    report = convert_archive(inp, out, ConvertSettings(), tiny_checkpoint, num_workers=2, files_per_batch=1,
                             converter=DiesOnCrashInputs)
    assert set(report.written) == {"a", "b", "d", "e", "f"}
    assert set(report.failed) == {"crash"} and "worker converting its batch died 3 times" in report.failed["crash"]
    assert "died 3 times" in (out / "crash.reason.txt").read_text()


def test_without_ray_the_engine_says_how_to_install_it(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [scale] extra were not installed
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint),
                 "--engine", "ray"]) == 2
    assert "pip install '.[scale]'" in capsys.readouterr().err


def test_a_temp_folder_too_long_for_rays_sockets_is_a_clear_setup_error(tiny_checkpoint, tmp_path, capsys,
                                                                        monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `ecg-dicom` process
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", synthetic_lead())
    long_dir = tmp_path / ("x" * 60)
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint),
                 "--engine", "ray", "--ray-temp-dir", str(long_dir)]) == 2
    assert "--ray-temp-dir" in capsys.readouterr().err and not long_dir.exists()
