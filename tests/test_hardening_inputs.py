"""Fault tests for issue 10, items 3-6 and the symlink half of 8, at the level of the readers
and the log formatter: hostile inputs made from a real cart file (tests/crafted.py) must
end in a typed one-line rejection, and nothing from them may reach a log line unescaped or
identify the patient."""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_lead

import crafted
from ecg_dicom.errors import InputError
from ecg_dicom.inputs import load_lead, refuse_links
from ecg_dicom.limits import Limits
from ecg_dicom.logsafe import SafeFormatter, strip_wire, uid_hash, wire
from ecg_dicom.sidecar import read_sidecar


@pytest.fixture(scope="module")
def ecg(shared_data):
    return crafted.read_real(shared_data)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, limits: Limits = Limits()) -> str:
    """The one-line reason ``path`` is refused with (as a reason file holds it)."""
    with pytest.raises(InputError) as info:
        load_lead(path, "I", limits=limits)
    reason = strip_wire(str(info.value))
    assert "\n" not in reason and reason
    return reason


# -- item 3 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, reason", [
    (crafted.bits_8_over_16, "waveform data longer than declared"),
    (crafted.data_longer_than_declared, "waveform data longer than declared"),
    (lambda ds: crafted.calibration(ds, sensitivity="-1.25"), "non-physical calibration"),
    (lambda ds: crafted.calibration(ds, correction="-1"), "non-physical calibration"),
    (lambda ds: crafted.calibration(ds, sensitivity="0"), "non-physical calibration"),
    (lambda ds: crafted.calibration(ds, sensitivity="125000"), "non-physical calibration"),
])
def test_inconsistent_waveform_encodings_are_refused(ecg, tmp_path, make, reason):
    """Issue 10 item 3: these were accepted and delivered (r -0.11 / 0.14 / -1.00)."""
    assert reason in refused(write(tmp_path, "x.dcm", crafted.encode(make(ecg))))


def test_the_real_file_still_reads(ecg, tmp_path):
    lead = load_lead(write(tmp_path, "ok.dcm", crafted.encode(crafted.with_marker(ecg))), "I")
    assert lead.fs == 1000.0 and lead.signal_uv.size == 10000


# -- item 5 ---------------------------------------------------------------------------------
def test_deflate_bomb_is_refused_before_it_is_inflated(ecg, tmp_path):
    path = write(tmp_path, "bomb.dcm", crafted.encode(crafted.deflate_bomb(ecg, 80)))
    assert path.stat().st_size < 1 << 20
    assert "inflates to more than" in refused(path)


@pytest.mark.parametrize("limits, make, reason", [
    (Limits(max_channels=12), lambda ds: crafted.many_channels(ds, 13), "declares 13 channels, at most 12"),
    (Limits(max_samples_per_channel=5000), crafted.with_marker, "declares 10000 samples per channel"),
    (Limits(max_input_bytes=100_000), crafted.with_marker, "(limits.max_input_bytes)"),
])
def test_dicom_beyond_the_limits_is_refused(ecg, tmp_path, limits, make, reason):
    assert reason in refused(write(tmp_path, "big.dcm", crafted.encode(make(ecg))), limits)


def test_npy_beyond_the_sample_limit_is_refused_from_its_header(tmp_path):
    path = tmp_path / "long.npy"
    np.save(path, synthetic_lead(seconds=20.0))
    assert "at most 5000 for one lead" in refused(path, Limits(max_samples_per_channel=5000))
    assert load_lead(path, "I").signal_uv.size == 10000


# -- item 6 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, make, reason", [
    ("deep.dcm", lambda ds: crafted.deep_sequence(ds, 400), "sequences nested too deeply"),
    ("corrupt_deflate.dcm", crafted.corrupt_deflate, "corrupt deflated data set"),
    ("syntax.npy", lambda ds: crafted.npy_header(crafted.NPY_SYNTAX_ERROR), "corrupt header"),
    ("token.npy", lambda ds: crafted.npy_header(crafted.NPY_TOKEN_ERROR), "corrupt header"),
    ("nested.npy", lambda ds: crafted.npy_header(crafted.NPY_NESTED), "corrupt header"),
])
def test_inputs_that_escaped_the_validators_are_typed_rejections(ecg, tmp_path, name, make, reason):
    """Issue 10 item 6: RecursionError, TokenError/SyntaxError, zlib.error reached the worker's
    catch-all with a traceback; each is an InputError with a one-line reason now."""
    assert reason in refused(write(tmp_path, name, make(ecg)))


@pytest.mark.parametrize("text, reason", [
    ("[" * 2000 + "]" * 2000, "(RecursionError)"),
    (crafted.SIDECAR_DEEP, "larger than 64 KiB"),
    (crafted.SIDECAR_DIGITS, "(ValueError)"),
    ('{"fs": 1e999}', "'fs' must be a positive number"),
    ('{"units": "furlongs\\n"}', "'units' must be one of"),
    ('{"lead": "%s"}' % crafted.MARKER_NAME, "is not a lead name"),
])
def test_bad_sidecars_are_typed_rejections_and_their_values_stay_out_of_the_log(tmp_path, text, reason):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_sidecar(path)
    assert reason in strip_wire(str(info.value))
    line = format_record("ecg_dicom.worker", "job 1 rejected: %s", str(info.value))
    assert "furlongs" not in line and crafted.MARKER_NAME not in line


# -- item 8 (symlinks), at the reader ------------------------------------------------------------
def test_symbolic_links_are_refused_without_reading_the_target(tmp_path):
    """The target is a FIFO: opening it for reading would block, so a hang means it was read."""
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "inbox.npy"
    link.symlink_to(fifo)
    done = threading.Event()
    errors: list[str] = []

    def check() -> None:
        try:
            refuse_links(link)
        except InputError as exc:
            errors.append(str(exc))
        done.set()

    threading.Thread(target=check, daemon=True).start()
    assert done.wait(5), "refuse_links opened the link's target"
    assert errors and "symbolic link" in errors[0]


# -- item 4: the log formatter ---------------------------------------------------------------
def format_record(name: str, msg: str, *args, exc: BaseException | None = None) -> str:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    return SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def test_a_newline_from_the_wire_cannot_forge_a_line():
    line = format_record("ecg_dicom.worker", "job 1 rejected: %s", f"SOP class {wire('1.2.3' + chr(10) + crafted.FORGED)}")
    assert "\n" not in line and "FORGED" not in line


def test_values_marked_as_from_the_wire_are_hashed_in_the_log_and_kept_in_reasons():
    reason = f"leads present: {wire(crafted.MARKER_NAME)}"
    assert crafted.MARKER_NAME not in format_record("ecg_dicom.worker", "%s", reason)
    assert crafted.MARKER_NAME in strip_wire(reason)


def test_third_party_messages_have_their_quoted_values_hashed():
    """pydicom / pynetdicom quote what they failed to parse: a stretched UID swallowed the name."""
    msg = f"Invalid value for VR UI: '1.2.3\\x00\\x10\\x00{crafted.MARKER_NAME}'. Please see <https://x>"
    for name in ("py.warnings", "pydicom", "pynetdicom.utils"):
        line = format_record(name, "%s", msg)
        assert crafted.MARKER_NAME not in line and "Invalid value for VR UI" in line


def test_exceptions_are_logged_without_their_message():
    try:
        raise ValueError(f"bad value {crafted.MARKER_ID}\nforged")
    except ValueError as exc:
        text = format_record("ecg_dicom.worker", "unexpected", exc=exc)
    assert crafted.MARKER_ID not in text and "ValueError: (message withheld" in text
    # issue 22 item 5: the frames come under Python's own header, so `grep Traceback` finds them
    lines = text.splitlines()
    assert lines[1] == "Traceback (most recent call last):" and lines[2].lstrip().startswith("File ")


def test_uid_hash_is_stable_and_hides_the_uid():
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert uid_hash(uid) == uid_hash(uid) and uid not in uid_hash(uid)


def test_pydicom_warnings_go_through_the_formatter(ecg, tmp_path):
    """Reading the stretched-UID file makes pydicom warn, quoting the bytes it swallowed."""
    from ecg_dicom import logsafe

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(stream)]
    shown = warnings.showwarning
    try:
        logsafe.install("INFO")
        path = write(tmp_path, "stretched.dcm", crafted.stretched_uid(ecg))
        with pytest.raises(InputError):
            load_lead(path, "I")
        logging.getLogger("ecg_dicom.test").warning("rejected: %s", "x")
    finally:
        warnings.showwarning = shown
        root.handlers, level = saved
        root.setLevel(level)
    log = stream.getvalue()
    assert "rejected: x" in log
    assert crafted.MARKER_NAME not in log and crafted.MARKER_ID not in log


# -- configuration of the new sections ---------------------------------------------------------
def test_tls_and_limits_config_is_validated_naming_the_key(tmp_path):
    import yaml

    from ecg_dicom.config import load_config
    from ecg_dicom.errors import ConfigError

    base = {"ae_title": "ECGDICOM", "folders": {"watch": "in", "output": "out", "work": "work"}}
    cases = [({"listen": {"tls": {"cert": "missing.crt", "key": "missing.key"}}}, "listen.tls.cert: no such file"),
             ({"listen": {"tls": {"cert": "a.pem", "key": "a.pem", "require_client_cert": True}}},
              "require_client_cert needs ca"),
             ({"limits": {"queue_high_water": 0}}, "limits.queue_high_water"),
             ({"limits": {"max_input_bytes": "64M"}}, "limits.max_input_bytes"),
             ({"http": {"port": 70000}}, "http.port")]
    (tmp_path / "a.pem").write_text("x")
    for extra, message in cases:
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump({**base, **extra}))
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_config(path)
    path.write_text(yaml.safe_dump({**base, "listen": {"tls": {"cert": "a.pem", "key": "a.pem"}}}))
    assert load_config(path).listen.tls.cert == tmp_path / "a.pem"  # relative to the config file


def test_bounded_inflate_ends_on_streams_with_trailing_bytes():
    """Found by the fuzz suite: a deflate stream followed by stray bytes made the bounded
    inflater loop forever (and the C-STORE never got an answer)."""
    from ecg_dicom.limits import check_inflated_size

    stream = crafted.deflated(b"\0" * 300_000) + b"\x01\x02"
    assert check_inflated_size(stream, Limits()) == 300_000
    with pytest.raises(InputError, match="inflates to more than"):
        check_inflated_size(crafted.deflated(b"\0" * 3_000_000), Limits(max_inflated_bytes=1 << 20))


# -- item 8: the watched folder with the real watcher and worker -------------------------------
def test_a_symlink_dropped_into_the_watched_folder_is_refused_unread(tmp_path, tiny_reconstructor):
    """A link to a .npy outside was processed. Now: moved as a link, refused with a reason;
    a link to a FIFO (which would block any reader) shows the target is never opened."""
    from peers import wait_for

    from ecg_dicom.config import Folders
    from ecg_dicom.config import Watcher as WatcherSettings
    from ecg_dicom.config import Worker as WorkerSettings
    from ecg_dicom.ingest import Spool
    from ecg_dicom.ingest.watcher import FolderWatcher
    from ecg_dicom.queue import JobQueue
    from ecg_dicom.service.worker import Worker

    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "work")
    for folder in (folders.watch, folders.output, folders.rejected):
        folder.mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    np.save(outside / "private.npy", synthetic_lead())
    os.mkfifo(outside / "pipe")
    (folders.watch / "linked.npy").symlink_to(outside / "private.npy")
    (folders.watch / "piped.npy").symlink_to(outside / "pipe")
    np.save(folders.watch / "plain.npy", synthetic_lead(seed=1))
    (folders.watch / "plain.json").symlink_to(outside / "private.npy")  # a sidecar that is a link
    queue = JobQueue(folders.queue_db)
    spool = Spool(folders.spool, queue)
    watcher = FolderWatcher(folders.watch, spool, WatcherSettings(stable_s=0.2, rescan_s=0.2))
    worker = Worker(queue, spool, tiny_reconstructor, folders, WorkerSettings(batch_size=4, max_wait_s=0.0),
                    deliver=False)
    stop = threading.Event()
    threads = [threading.Thread(target=watcher.run, daemon=True),
               threading.Thread(target=worker.run, args=(stop,), daemon=True)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: queue.counts()["rejected"] == 3, 20, "three rejections")
    finally:
        watcher.stop()
        stop.set()
        for t in threads:
            t.join(10)
    reasons = {job.name: job.reason for job in queue.jobs()}
    assert "symbolic link" in reasons["linked"] and "symbolic link" in reasons["piped"]
    assert "sidecar .json" in reasons["plain"] and "symbolic link" in reasons["plain"]
    assert not list(folders.output.glob("*.npy")) and not list(folders.output.glob("*.dcm"))
    assert (folders.rejected / "linked.reason.txt").read_text().strip()
    assert (folders.rejected / "linked.npy").is_symlink()          # the link was moved, not its target
    assert (outside / "private.npy").is_file() and (outside / "pipe").exists()
    queue.close()


def test_an_invalid_study_uid_is_logged_as_a_hash(caplog):
    """A non-UID Study Instance UID was logged verbatim (it held the patient ID in the probe)."""
    import pydicom

    from ecg_dicom.dicom import provenance   # the study logic both writers share

    source = pydicom.Dataset()
    source.StudyInstanceUID = f"not a uid {crafted.MARKER_ID}"
    with caplog.at_level(logging.WARNING):
        provenance.study_uid(source, None, {})
    lines = [SafeFormatter("%(message)s").format(r) for r in caplog.records]
    assert lines and not [line for line in lines if crafted.MARKER_ID in line]
