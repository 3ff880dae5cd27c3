"""Nothing lost: kill -9 during a burst, PACS down for a while, SIGTERM, against real peers."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_lead
from peers import (
    PACS_AET,
    Orthanc,
    Service,
    dcmtk,
    ecg_dicom,
    free_port,
    status_counts,
    stored_ok,
    storescu,
    wait_for,
    write_config,
)
from pydicom import dcmread
from pydicom.uid import generate_uid

pytestmark = pytest.mark.slow


def make_inputs(source: Path, folder: Path, n: int) -> dict[str, str]:
    """``n`` copies of a real ECG, each a distinct instance; returns {file path: SOP Instance UID}."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(source)
    files = {}
    for i in range(n):
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"ecg{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[str(path)] = uid
    return files


def orthanc_copies(pacs: Orthanc, output: Path, input_uid: str) -> int:
    """How many instances Orthanc holds of the result made from ``input_uid``."""
    result = output / f"{input_uid}.dcm"
    if not result.exists():
        return 0
    uid = dcmread(result, stop_before_pixels=True).SOPInstanceUID
    return sum(1 for hit in pacs.lookup(uid) if hit["Type"] == "Instance")


def test_kill_9_during_a_burst_loses_nothing_and_duplicates_nothing(tmp_path, tiny_checkpoint, shared_data):
    inputs = make_inputs(shared_data / "dicom" / "hemodynamic" / "ge_maclab_12lead_in_hemodynamic_sop.dcm",
                         tmp_path / "cart", 50)
    with Orthanc(tmp_path / "orthanc") as pacs:
        cfg = write_config(tmp_path / "site", tiny_checkpoint,
                           pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
        svc = Service(cfg).start()
        try:
            cart = subprocess.Popen([dcmtk("storescu"), "-v", "-aet", "CART1", "-aec", "ECGDICOM", "127.0.0.1",
                                     str(svc.port), *inputs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            wait_for(lambda: sum(svc.counts().values()) >= 12, 60, "a dozen stores accepted", interval=0.01)
            svc.kill9()
            out, _ = cart.communicate(timeout=60)
            acked = stored_ok(out)
            # stores go one after another: with 12 recorded, at least 11 were answered
            assert len(acked) >= 11, out[-2000:]
            svc.start()
            wait_for(lambda: svc.settled(len(acked)), 120, "every accepted job to be delivered")
            for path in acked:
                assert orthanc_copies(pacs, svc.output, inputs[path]) == 1, path
            # the cart sends again what was never acknowledged, as carts do
            rest = [p for p in inputs if p not in acked]
            if rest:
                again = storescu(svc.port, rest)
                assert again.returncode == 0, again.stderr
            wait_for(lambda: svc.settled(len(inputs)), 120, "the re-sent inputs to be delivered")
            assert len(pacs.instances()) == 2 * len(inputs)   # each: the waveform and its report page
            assert all(orthanc_copies(pacs, svc.output, uid) == 1 for uid in inputs.values())
            t0 = time.monotonic()
            assert svc.stop() == 0
            assert time.monotonic() - t0 < 10
        finally:
            svc.kill9()


def test_sigterm_during_a_burst_exits_0_quickly_and_keeps_every_accepted_store(tmp_path, tiny_checkpoint,
                                                                               shared_data):
    """No PACS: SIGTERM mid-burst; then a restart finishes every store that was answered
    Success. Files already waiting in the watch folder at start are taken too."""
    inputs = make_inputs(shared_data / "dicom" / "hemodynamic" / "ge_maclab_12lead_in_hemodynamic_sop.dcm",
                         tmp_path / "cart", 20)
    cfg = write_config(tmp_path / "site", tiny_checkpoint, allowed_callers=None)
    svc = Service(cfg)
    svc.watch.mkdir(parents=True)
    np.save(svc.watch / "waiting_at_start.npy", synthetic_lead(seconds=6.0))
    svc.start()
    try:
        assert "allowed_callers is not set" in svc.log_text()
        cart = subprocess.Popen([dcmtk("storescu"), "-v", "-aet", "ANYCART", "-aec", "ECGDICOM", "127.0.0.1",
                                 str(svc.port), *inputs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        wait_for(lambda: sum(svc.counts().values()) >= 8, 60, "some stores accepted", interval=0.01)
        t0 = time.monotonic()
        assert svc.stop() == 0
        assert time.monotonic() - t0 < 10
        acked = stored_ok(cart.communicate(timeout=60)[0])
        svc.start()
        wait_for(lambda: svc.settled(len(acked) + 1), 120, "every accepted job to be done")
        for path in acked:
            assert (svc.output / f"{inputs[path]}.npy").is_file(), path
        assert (svc.output / "waiting_at_start.npy").is_file()
        assert svc.stop() == 0
    finally:
        svc.kill9()


def test_results_wait_for_a_stopped_pacs_and_are_delivered_when_it_is_back(tmp_path, tiny_checkpoint,
                                                                            shared_data):
    inputs = sorted((shared_data / "dicom" / "12lead").glob("*.dcm"))
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    pacs.stop()   # the PACS is down when the results are ready
    cfg = write_config(tmp_path / "site", tiny_checkpoint,
                       pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
    svc = Service(cfg).start()
    try:
        assert storescu(svc.port, inputs).returncode == 0
        wait_for(lambda: svc.counts() == {"delivering": len(inputs)}, 60, "results ready, awaiting delivery")
        time.sleep(2.5)  # several retries (0.5 s initial backoff) against the stopped PACS
        assert svc.counts() == {"delivering": len(inputs)}   # none marked delivered
        assert min(job["attempts"] for job in svc.jobs()) >= 2
        # one line per job when its delivery starts failing, not one (or three) per attempt
        assert svc.log_text().count("delivery failed") == len(inputs)
        assert "TCP Initialisation Error" not in svc.log_text().replace("; TCP Initialisation Error", "")
        # a restart keeps the retry schedule and the attempt counts
        assert svc.stop() == 0
        assert status_counts(cfg)["delivering"] == len(inputs)
        svc.start()
        pacs.start()
        wait_for(lambda: svc.counts() == {"done": len(inputs)}, 60, "delivery once the PACS is back")
        assert len(pacs.instances()) == 2 * len(inputs)       # each: the waveform and its report page
        assert not list((svc.output / "dead-letter").iterdir())
    finally:
        svc.kill9()
        pacs.stop()


def test_permanent_rejection_by_pacs_goes_to_dead_letter(tmp_path, tiny_checkpoint, shared_data):
    """Orthanc checks the called AE title: a misconfigured one is a permanent rejection."""
    ecg = shared_data / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"
    with Orthanc(tmp_path / "orthanc") as pacs:
        cfg = write_config(tmp_path / "site", tiny_checkpoint,
                           pacs={"ae_title": "NOTTHEPACS", "host": "127.0.0.1", "port": pacs.dicom_port})
        with Service(cfg) as svc:
            assert storescu(svc.port, [ecg]).returncode == 0
            wait_for(lambda: svc.counts() == {"dead": 1}, 60, "the job to be dead-lettered")
            uid = dcmread(ecg, stop_before_pixels=True).SOPInstanceUID
            dead = svc.output / "dead-letter"
            assert (dead / f"{uid}.dcm").is_file()
            assert "rejected permanently" in (dead / f"{uid}.reason.txt").read_text()
            assert pacs.instances() == []


# -- issue 22, item 1: a full disk ----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs for output, work folder and job store (unmounted afterwards)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as rsp:
            return rsp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def fill(disk: Path, leave: int) -> Path:
    """Write a file that leaves ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= fh.write(chunk[:size])
    return filler


def test_a_full_disk_holds_jobs_only_until_space_returns_and_health_says_so(tmp_path, tiny_checkpoint,
                                                                            shared_data, small_disk):
    """Output, work folder and job store on one 40 MiB file system, filled to ~400 kB free;
    40 C-STOREs. Used to: one job stuck in `processing` (its release failed on the same full
    disk) until a restart, while /health said ready."""
    inputs = make_inputs(shared_data / "dicom" / "hemodynamic" / "ge_maclab_12lead_in_hemodynamic_sop.dcm",
                         tmp_path / "cart", 41)
    files = list(inputs)
    http = free_port()
    cfg = write_config(tmp_path / "site", tiny_checkpoint, http={"host": "127.0.0.1", "port": http},
                       folders={"watch": str(small_disk / "inbox"), "output": str(small_disk / "outbox"),
                                "work": str(small_disk / "work")})
    svc = Service(cfg).start()
    seen: list[int] = []
    stop = threading.Event()
    poller = threading.Thread(target=lambda: [seen.append(health(http)) for _ in iter(lambda: stop.wait(0.2), True)],
                              daemon=True)
    try:
        assert storescu(svc.port, files[:1]).returncode == 0   # a first job: fonts cached, store warm
        wait_for(lambda: svc.settled(1), 60, "the first job done")
        assert health(http) == 200
        pid = svc.proc.pid
        filler = fill(small_disk, leave=400_000)
        poller.start()
        acked, refused = [], []
        for path in files[1:]:
            result = storescu(svc.port, [path], timeout=60)
            (acked if stored_ok(result.stdout + result.stderr) else refused).append(path)
        assert acked and refused, (len(acked), len(refused))
        wait_for(lambda: 503 in seen, 30, "/health not ready while the disk is full")
        time.sleep(3)   # the worker tries again meanwhile (every 5 s)
        filler.unlink()
        freed = time.monotonic()
        wait_for(lambda: svc.settled(1 + len(acked)), 90, "every accepted job done once space is back")
        print(f"full disk: {len(acked)} stores accepted, {len(refused)} answered 0xA700, /health 503 in "
              f"{seen.count(503)} of {len(seen)} polls; all accepted done {time.monotonic() - freed:.1f} s after "
              "space returned")
        wait_for(lambda: health(http) == 200, 30, "/health ready again")
        assert svc.proc.pid == pid   # no restart
        assert svc.counts() == {"done": 1 + len(acked)}
        for path in acked:
            assert (svc.output / f"{inputs[path]}.dcm").is_file(), path
        # the cart sends again what was refused: nothing lost
        again = storescu(svc.port, refused, timeout=120)
        assert len(stored_ok(again.stdout + again.stderr)) == len(refused)
        wait_for(lambda: svc.settled(len(files)), 120, "the re-sent inputs done")
        log = svc.log_text()
        # one line when writing starts failing (not one per retry), one when it works again
        assert log.count("cannot write outputs") <= 2 and "outputs can be written again" in log, log[-3000:]
        assert "Traceback" not in log
    finally:
        stop.set()
        svc.kill9()


# -- issue 22, item 3: a cart that reuses a SOP Instance UID ------------------------------------
def test_a_reused_source_uid_with_other_content_gets_its_own_output_uids(tmp_path, tiny_checkpoint, shared_data):
    """8 C-STOREs with one SOP Instance UID and different waveforms used to give 8 results
    with one output SOP Instance UID (the PACS kept one). A replay of the same bytes still
    gives the same output UIDs (no duplicate at PACS)."""
    ds = dcmread(shared_data / "dicom" / "hemodynamic" / "ge_maclab_12lead_in_hemodynamic_sop.dcm")
    group = ds.WaveformSequence[0]
    channels = int(group.NumberOfWaveformChannels)
    samples = np.frombuffer(group.WaveformData, dtype="<i2")
    uid = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    cart = tmp_path / "cart"
    cart.mkdir()
    files = []
    for i in range(8):   # the same UID, another recording each time (the samples shifted in time)
        group.WaveformData = np.roll(samples, 37 * channels * i).astype("<i2").tobytes()
        files.append(cart / f"same_uid_{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    with Orthanc(tmp_path / "orthanc") as pacs:
        cfg = write_config(tmp_path / "site", tiny_checkpoint,
                           pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
        with Service(cfg) as svc:
            sent = storescu(svc.port, files)
            assert len(stored_ok(sent.stdout + sent.stderr)) == 8
            wait_for(lambda: svc.settled(8), 120, "8 results delivered")
            results = sorted(svc.output.glob(f"{uid}*.dcm"))
            waveforms = [p for p in results if not p.name.endswith(".report.dcm")]
            assert len(waveforms) == 8
            output_uids = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in waveforms}
            assert len(output_uids) == 8
            assert sum(1 for u in output_uids for hit in pacs.lookup(u) if hit["Type"] == "Instance") == 8
            assert len(pacs.instances()) == 16   # each: the waveform and its report page
            # visible: the log (UID hashed), the job's note in status, the result's .json
            log = svc.log_text()
            assert log.count("came with different content in job") == 7 and uid not in log
            notes = [job["note"] for job in svc.jobs()]
            assert notes[0] is None and all("reuses UIDs" in n for n in notes[1:])
            meta = json.loads((svc.output / f"{uid}-8.json").read_text())
            assert meta["source_uid_reused"]["other_jobs"] == [1, 2, 3, 4, 5, 6, 7]
            shown = ecg_dicom("status", "--config", str(cfg), "8")
            assert "note: the source SOP Instance UID came with different content" in shown.stdout
            # a replay of the first object's bytes: its own job, the same output UIDs as the first
            sent = storescu(svc.port, files[:1])
            assert len(stored_ok(sent.stdout + sent.stderr)) == 1
            wait_for(lambda: svc.settled(9), 60, "the replay delivered")
            first = dcmread(svc.output / f"{uid}.dcm", stop_before_pixels=True).SOPInstanceUID
            replay = dcmread(svc.output / f"{uid}-9.dcm", stop_before_pixels=True).SOPInstanceUID
            assert replay == first
            assert len(pacs.instances()) == 16


# -- issue 22: durability repeated after its changes ---------------------------------------------
PACS_DOWN_S = float(os.environ.get("DURABILITY_PACS_DOWN_S", "10"))   # the run: 60


def _send_all(port: int, files: list[str], senders: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([dcmtk("storescu"), "-v", "-aet", "CART1", "-aec", "ECGDICOM", "127.0.0.1", str(port),
                              *files[i::senders]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(senders) if files[i::senders]]


def test_three_kill_9s_under_six_senders_and_a_pacs_outage_lose_nothing_and_duplicate_nothing(
        tmp_path, tiny_checkpoint, shared_data):
    """6 carts sending at once; the service killed (-9) three times while they send; the PACS
    down for PACS_DOWN_S meanwhile (from the first kill). The carts send again what was not
    acknowledged. Every input ends with exactly one result (and one report page) at Orthanc,
    counted by SOP Instance UID."""
    inputs = make_inputs(shared_data / "dicom" / "hemodynamic" / "ge_maclab_12lead_in_hemodynamic_sop.dcm",
                         tmp_path / "cart", 90)
    with Orthanc(tmp_path / "orthanc") as pacs:
        cfg = write_config(tmp_path / "site", tiny_checkpoint, max_associations=10,
                           pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port})
        svc = Service(cfg).start()
        acked: set[str] = set()
        down_since = None
        try:
            for kill in range(3):
                before = sum(svc.counts().values())
                carts = _send_all(svc.port, [p for p in inputs if p not in acked], 6)
                wait_for(lambda: sum(svc.counts().values()) >= before + 12, 60, "stores accepted", interval=0.01)
                svc.kill9()
                for cart in carts:
                    acked |= set(stored_ok(cart.communicate(timeout=60)[0]))
                if kill == 0:
                    pacs.stop()
                    down_since = time.monotonic()
                svc.start()
            rest = [p for p in inputs if p not in acked]
            for cart in _send_all(svc.port, rest, 6):
                acked |= set(stored_ok(cart.communicate(timeout=120)[0]))
            assert acked == set(inputs)
            wait_for(lambda: svc.counts().get("delivering", 0) + svc.counts().get("done", 0) >= len(inputs), 120,
                     "every result written, awaiting the PACS")
            time.sleep(max(0.0, PACS_DOWN_S - (time.monotonic() - down_since)))
            pacs.start()
            wait_for(lambda: svc.settled(len(inputs)), 120, "every result delivered once the PACS is back")
            counts = svc.counts()
            assert set(counts) == {"done"}, counts
            # 0 lost, 0 duplicated: one result per input, and nothing else at the PACS
            copies = {uid: orthanc_copies(pacs, svc.output, uid) for uid in inputs.values()}
            assert set(copies.values()) == {1}, {u: n for u, n in copies.items() if n != 1}
            assert len(pacs.instances()) == 2 * len(inputs)   # each: the waveform and its report page
            print(f"durability: {len(inputs)} inputs, 3 kill -9, PACS down {PACS_DOWN_S:g} s: "
                  f"{counts['done']} jobs done, {len(pacs.instances())} instances at Orthanc")
            assert svc.stop() == 0
        finally:
            svc.kill9()
