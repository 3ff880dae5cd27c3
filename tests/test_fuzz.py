"""Fuzz suite (issue 10): >= 1,000 mutated DICOM and .npy inputs, made by a seeded generator
from real recordings in shared/data, through both doors of a running ``serve``; since issue 21
also mutated vendor XML (GE MUSE, Philips, HL7 aECG: entity bombs, external entities, wrong
base64, leads of unequal length, rate/scale/units missing or absurd) and WFDB records with
damaged headers and short signal files, dropped into the watched folder.

DICOM objects go over the wire (a pynetdicom SCU sending each file's bytes as they are,
corruptions included) and into the watched folder; .npy arrays (with mutated sidecars and
hostile names) into the watched folder. Every crafted object names the marker patient of
tests/crafted.py. Afterwards:

* the service still answers (C-ECHO, ``/health``);
* every C-STORE got a status, every accepted input ended ``done`` or ``rejected`` with a
  one-line reason (and its reason file), none is stuck;
* the log holds no traceback, no marker name or ID, no forged line;
* resident memory stayed bounded and came back down;
* nothing was written outside the configured folders (the service's TMPDIR and HOME are
  empty folders that must stay empty).

The seed is fixed (``FUZZ_SEED`` overrides it), so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from peers import CART_AET, SERVICE_AET, Service, echoscu, wait_for, write_config
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config

import crafted
from ecg_dicom.dicom.codes import ECG_WAVEFORM_SOP_CLASSES
from ecg_dicom.files import safe_stem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
N_WIRE, N_DROPPED_DICOM, N_NPY, N_VENDOR, N_WFDB = 320, 300, 420, 120, 30
DICOM_SOURCES = ("dicom/12lead/mortara_eli250_waveform_ecg.dcm", "dicom/12lead/ecgtoolkit_example_eli250.dcm",
                 "dicom/hemodynamic/ge_maclab_12lead_in_hemodynamic_sop.dcm")
NPY_SOURCES = (("ecg12/ptbxl/HR06000", 500), ("ecg12/ptbxl/records500/00000/00002_hr", 500),
               ("ecg12/ptbxl/records500/01000/01017_hr", 500), ("single_lead/mitdb/100", 360))
HOSTILE_NAMES = ("../../escape", "..", ".hidden", "a/b", "x\ny", "name with spaces", crafted.MARKER_NAME,
                 crafted.MARKER_ID, "é" * 40, "A" * 300, "con", "-rf")
RSS_PEAK_MIB, RSS_KEPT_MIB = 900, 200


# -- the generator -------------------------------------------------------------------------------
def _meta_end(data: bytes) -> int:
    return 132 + 12 + int.from_bytes(data[140:144], "little")


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Corrupt the data set (never the File Meta, so that the wire door can still send it)."""
    start = _meta_end(data)
    out = bytearray(data)
    kind = rng.choice(("flip", "truncate", "insert", "delete", "length", "zeros"))
    if kind == "flip":
        for _ in range(rng.randint(1, 24)):
            out[rng.randrange(start, len(out))] = rng.randrange(256)
    elif kind == "truncate":
        del out[rng.randrange(start, len(out)):]
    elif kind == "insert":
        at = rng.randrange(start, len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "delete":
        at = rng.randrange(start, len(out))
        del out[at:at + rng.randint(1, 64)]
    elif kind == "length":  # a value length field (or anything) turned into a large number
        at = rng.randrange(start, len(out) - 4)
        out[at:at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\xfe\xff\x00\x00", rng.randbytes(4)))
    else:
        at = rng.randrange(start, len(out))
        out[at:at + rng.randint(16, 4096)] = bytes(min(4096, len(out) - at))
    return bytes(out)


def _set(ds: pydicom.Dataset, rng: random.Random) -> pydicom.Dataset:
    """One attribute-level mutation of a waveform object."""
    group = rng.choice(list(ds.WaveformSequence))
    channel = rng.choice(list(group.ChannelDefinitionSequence))
    choice = rng.randrange(14)
    if choice == 0:
        group.WaveformBitsAllocated = rng.choice((0, 1, 8, 12, 32, 64, 65535))
    elif choice == 1:
        group.WaveformSampleInterpretation = rng.choice(("SB", "UB", "US", "SL", "MB", "AB", "XX", ""))
    elif choice == 2:
        group.NumberOfWaveformSamples = rng.choice((0, 1, 2, 999999999, int(group.NumberOfWaveformSamples) * 2))
    elif choice == 3:
        group.NumberOfWaveformChannels = rng.choice((0, 1, 13, 200, 65535))
    elif choice == 4:
        group.SamplingFrequency = rng.choice(("0", "-500", "1e9", "NaN", "inf", "0.001", "99999"))
    elif choice == 5:
        channel.ChannelSensitivity = rng.choice(("-1", "0", "1e30", "1e-30", "NaN", "-inf", "abc"))
    elif choice == 6:
        channel.ChannelSensitivityCorrectionFactor = rng.choice(("-1", "0", "1e30", "NaN"))
    elif choice == 7:
        channel.ChannelBaseline = rng.choice(("1e30", "-1e30", "NaN", "12345678"))
    elif choice == 8:
        channel.ChannelSensitivityUnitsSequence[0].CodeValue = rng.choice(("mm[Hg]", "kV", "", "uV\n" + crafted.FORGED))
    elif choice == 9:
        keyword = rng.choice(("WaveformData", "ChannelDefinitionSequence", "SamplingFrequency",
                              "WaveformSampleInterpretation", "NumberOfWaveformSamples"))
        if keyword in group:
            delattr(group, keyword)
    elif choice == 10:
        group.WaveformData = group.WaveformData + rng.randbytes(rng.choice((1, 2, 100, 5000)))
    elif choice == 11:
        group.WaveformData = group.WaveformData[: rng.randrange(len(group.WaveformData))]
    elif choice == 12:
        ds.SOPInstanceUID = rng.choice(("../../etc/passwd", "..", ".", "1.2.3/../../x", "a\nb", "")) + \
            f".{rng.randrange(10**9)}"
    else:
        channel.ChannelLabel = crafted.MARKER_ID
        channel.ChannelSourceSequence[0].CodeValue = "0"
        channel.ChannelSourceSequence[0].CodeMeaning = crafted.MARKER_NAME
    return ds


def dicom_input(rng: random.Random, bases: list[pydicom.Dataset], allow_sop_class_change: bool) -> bytes:
    """One mutated DICOM file (Part 10 bytes), its patient the marker."""
    ds = crafted.with_marker(rng.choice(bases))
    ds.file_meta.TransferSyntaxUID = rng.choice((ExplicitVRLittleEndian, ExplicitVRLittleEndian,
                                                 ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian))
    kind = rng.random()
    if kind < 0.12:
        special = rng.choice((crafted.bits_8_over_16, crafted.data_longer_than_declared, crafted.marker_labels,
                              lambda d: crafted.calibration(d, sensitivity="-1.25"),
                              lambda d: crafted.calibration(d, correction="-2"),
                              lambda d: crafted.many_channels(d, 64)))
        return crafted.encode(special(ds))
    if kind < 0.20:
        maker = rng.choice((crafted.deep_sequence, crafted.stretched_uid, crafted.corrupt_deflate,
                            crafted.newline_sop_class if allow_sop_class_change else crafted.stretched_uid,
                            lambda d: crafted.encode(crafted.deflate_bomb(d, 40))))
        return maker(ds)
    if kind < 0.55:
        try:
            for _ in range(rng.randint(1, 3)):
                ds = _set(ds, rng)
            return crafted.encode(ds)
        except Exception:  # pydicom refused to set or write it (e.g. DS 'abc'): corrupt bytes instead
            return mutate_bytes(rng, crafted.encode(crafted.with_marker(rng.choice(bases))))
    return mutate_bytes(rng, crafted.encode(ds))


def npy_input(rng: random.Random, leads: list[tuple[np.ndarray, int]]) -> tuple[bytes, str | None]:
    """One mutated .npy file and its sidecar text (or None)."""
    lead, fs = rng.choice(leads)
    sidecar: str | None = json.dumps({"fs": fs, "lead": "I"}) if fs != 500 else None
    kind = rng.randrange(12)
    array: np.ndarray = lead.astype(rng.choice((np.float32, np.float64, np.int16, np.int32)))
    if kind == 0:
        array = array.reshape(1, -1) if rng.random() < 0.5 else np.stack([array, array])
    elif kind == 1:
        array = array.copy()
        array[rng.randrange(array.size)] = rng.choice((np.nan, np.inf)) if array.dtype.kind == "f" else 0
    elif kind == 2:
        array = array[: rng.choice((0, 1, 100, 500))]
    elif kind == 3:
        array = np.zeros(array.size, dtype=[(crafted.MARKER_NAME, "<f4")])
    elif kind == 4:
        array = (array * rng.choice((1e-6, 1e6, -1.0, 0.0))).astype(np.float64)
    elif kind == 5:
        sidecar = rng.choice((crafted.SIDECAR_DEEP, crafted.SIDECAR_DIGITS, "[" * 2000 + "]" * 2000, "{", "null",
                              json.dumps({"fs": "500"}), json.dumps({"fs": -1}), json.dumps({"fs": 1e308}),
                              json.dumps({"lead": crafted.MARKER_NAME}), json.dumps({crafted.MARKER_ID: 1}),
                              json.dumps({"units": "mV\n" + crafted.FORGED}), "\xff\xfe garbage"))
    if kind == 6:
        data = crafted.npy_header(rng.choice((crafted.NPY_SYNTAX_ERROR, crafted.NPY_TOKEN_ERROR, crafted.NPY_NESTED,
                                              "{'descr': '|O', 'fortran_order': False, 'shape': (10,), }",
                                              "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999,), }",
                                              "{'descr': '<f4', 'fortran_order': False, 'shape': (-5,), }",
                                              "{'descr': '<f4', 'fortran_order': True, 'shape': (5000,), }",
                                              f"{{'descr': '{crafted.MARKER_NAME}', 'fortran_order': False, "
                                              "'shape': (5000,), }")))
        return data, sidecar
    buffer = __import__("io").BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    if kind >= 7:  # byte-level corruption anywhere, header included
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        if kind == 11:
            del out[rng.randrange(len(out)):]
        data = bytes(out)
    return data, sidecar


def wfdb_input(rng: random.Random, header: str, data: bytes) -> tuple[str, bytes]:
    """A damaged WFDB record (header text, signal bytes): absurd rate, unknown format, gain 0
    or negative, unknown units, fewer signals declared than lines, a signal file cut short."""
    kind = rng.randrange(7)
    lines = header.splitlines()
    if kind == 0:
        lines[0] = lines[0].replace(" 500 ", rng.choice((" 0 ", " -5 ", " 1e9 ", " abc ", " ")), 1)
    elif kind == 1:
        lines[1] = lines[1].replace(" 16 ", rng.choice((" 8 ", " 310 ", " 99 ", " 16x4 ")), 1)
    elif kind == 2:
        lines[2] = lines[2].replace("1000.0(0)/mV", rng.choice(("0/mV", "-3/mV", "1000/furlong", "x")), 1)
    elif kind == 3:  # a signal line more than declared: the first 11 are read
        lines[0] = lines[0].replace(" 12 ", " 11 ", 1)
    elif kind == 4:
        data = data[: rng.randrange(len(data))]
    elif kind == 5:
        lines[0] = lines[0] + " " + crafted.MARKER_NAME
    return "\n".join(lines) + "\n", data


# -- the run --------------------------------------------------------------------------------------
def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as rsp:
            return rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def send_over_the_wire(port: int, files: list[Path]) -> dict[str, int]:
    """C-STORE each file's bytes unchanged (pynetdicom's chunked send: no re-encoding), 40 per
    association; returns {status text: count}; a store without a status fails the test."""
    statuses: dict[str, int] = {}
    ae = AE(ae_title=CART_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for uid in ECG_WAVEFORM_SOP_CLASSES:  # one context per transfer syntax: each file is sent as it is
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ae.add_requested_context(uid, syntax)
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for i in range(0, len(files), 40):
            assoc = ae.associate("127.0.0.1", port, ae_title=SERVICE_AET)
            assert assoc.is_established
            for path in files[i:i + 40]:
                status = assoc.send_c_store(path)
                assert "Status" in status, f"no C-STORE response for {path.name}"
                key = f"0x{int(status.Status):04X}"
                statuses[key] = statuses.get(key, 0) + 1
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
    return statuses


def test_fuzz_both_doors(tmp_path, tiny_checkpoint, shared_data):
    rng = random.Random(SEED)
    bases = []
    for relative in DICOM_SOURCES:
        ds = pydicom.dcmread(shared_data / relative)
        bases.append(ds)
    leads = []
    for record, fs in NPY_SOURCES:
        rec = wfdb.rdrecord(str(shared_data / record))
        leads.append(((rec.p_signal[: 10 * fs, 0] * 1000).astype(np.float32), fs))

    # inputs, written before the service starts (and outside its folders)
    made = tmp_path / "made"
    wire_dir, drop_dir = made / "wire", made / "drop"
    wire_dir.mkdir(parents=True)
    drop_dir.mkdir()
    wire_files = []
    for i in range(N_WIRE):
        path = wire_dir / f"w{i:04d}.dcm"
        path.write_bytes(dicom_input(rng, bases, allow_sop_class_change=False))
        wire_files.append(path)
    drops: list[tuple[str, bytes, str | None]] = []
    for i in range(N_DROPPED_DICOM):
        name = f"d{i:04d}" + (rng.choice(HOSTILE_NAMES) if rng.random() < 0.1 else "") + ".dcm"
        drops.append((name, dicom_input(rng, bases, allow_sop_class_change=True), None))
    for i in range(N_NPY):
        name = f"n{i:04d}" + (rng.choice(HOSTILE_NAMES) if rng.random() < 0.1 else "") + ".npy"
        data, sidecar = npy_input(rng, leads)
        drops.append((name, data, sidecar))
    vendor_sources = [(shared_data / rel).read_bytes() for rel in crafted.VENDOR_XML]
    for i in range(N_VENDOR):
        drops.append((f"v{i:04d}" + rng.choice((".xml", ".XML", ".ecg")), crafted.vendor_xml_input(rng, vendor_sources),
                      None))
    rng.shuffle(drops)
    wfdb_header = (shared_data / "ecg12/ptbxl/00001_lr.hea").read_text()
    wfdb_data = (shared_data / "ecg12/ptbxl/00001_lr.dat").read_bytes()
    wfdb_drops = []
    for i in range(N_WFDB):
        header, data = wfdb_input(rng, wfdb_header.replace("00001_lr", f"r{i:04d}"), wfdb_data)
        wfdb_drops.append((f"r{i:04d}", header, data))

    site = tmp_path / "site"
    cfg = write_config(site, tiny_checkpoint, http={"host": "127.0.0.1", "port": _free_port()},
                       limits={"max_input_bytes": 4 << 20, "max_inflated_bytes": 16 << 20,
                               "queue_high_water": 5000})
    outside_tmp, outside_home = site / "tmp-outside", site / "home-outside"
    outside_tmp.mkdir()
    outside_home.mkdir()
    service = Service(cfg)
    env_saved = {k: os.environ.get(k) for k in ("TMPDIR", "HOME")}
    os.environ["TMPDIR"], os.environ["HOME"] = str(outside_tmp), str(outside_home)
    try:
        service.start()
    finally:
        for k, v in env_saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    http_port = int(__import__("yaml").safe_load(cfg.read_text())["http"]["port"])
    try:
        pid = service.proc.pid
        assert http_get(http_port, "/health")[0] == 200
        rss_before = rss_mib(pid)
        t0 = time.monotonic()
        n_sidecars = 0
        for name, data, sidecar in drops:
            name = safe_name(name)
            stem = name.rsplit(".", 1)[0]
            if sidecar is not None:
                part = service.watch / f".{stem}.json.part"
                part.write_bytes(sidecar.encode("utf-8", "surrogateescape"))
                os.replace(part, service.watch / f"{stem}.json")
                n_sidecars += 1
            target = service.watch / name
            part = service.watch / f".{target.name}.part"
            part.write_bytes(data)
            os.replace(part, target)
        for stem, header, data in wfdb_drops:  # signal file first, then its header (both moved in)
            for name, payload in ((f"{stem}.dat", data), (f"{stem}.hea", header.encode())):
                part = service.watch / f".{name}.part"
                part.write_bytes(payload)
                os.replace(part, service.watch / name)
        statuses = send_over_the_wire(service.port, wire_files)
        accepted_wire = statuses.get("0x0000", 0)
        expected_jobs = accepted_wire + len(drops) + len(wfdb_drops)
        wait_for(lambda: service.settled(expected_jobs), 600, "every fuzz input to be settled", interval=1.0)
        elapsed = time.monotonic() - t0
        time.sleep(2.0)
        rss_peak, rss_after = rss_mib(pid, "VmHWM"), rss_mib(pid)
        print(f"fuzz burst: RSS {rss_before:.0f} MiB before, peak {rss_peak:.0f}, {rss_after:.0f} after")

        # the service still answers
        assert echoscu(service.port)
        status, body = http_get(http_port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ready"
        metrics_text = http_get(http_port, "/metrics")[1].decode()

        counts = service.counts()
        jobs = _jobs(service)
        assert len(jobs) == expected_jobs and set(counts) <= {"done", "rejected"}, counts
        rejected = [j for j in jobs if j["state"] == "rejected"]
        for job in rejected:
            assert job["reason"] and "\n" not in job["reason"], job
            assert (service.output / "rejected" / f"{safe_stem(job['name'])}.reason.txt").is_file(), job["name"]
        assert f'ecg_dicom_jobs{{state="rejected"}} {float(len(rejected))}' in metrics_text
        # failure statuses on the wire were answered with a reason, never silence
        assert set(statuses) <= {"0x0000", "0xC001"}, statuses

        log = service.log_text()
        assert "Traceback" not in log
        assert crafted.MARKER_NAME not in log and crafted.MARKER_ID not in log and "Markerpatient" not in log
        assert "FORGED" not in log
        assert all(line[:4].isdigit() for line in log.splitlines() if line), "a line not written by the formatter"

        assert rss_peak < RSS_PEAK_MIB, f"peak RSS {rss_peak:.0f} MiB"
        assert rss_after < rss_before + RSS_KEPT_MIB, f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB"

        # nothing outside the configured folders
        assert not list(outside_tmp.iterdir()) and not list(outside_home.iterdir())
        assert {p.name for p in site.iterdir()} <= {"site.yaml", "serve.log", "inbox", "outbox", "work",
                                                    outside_tmp.name, outside_home.name}
        assert sorted(p.name for p in made.rglob("*")) == sorted(
            ["wire", "drop"] + [p.name for p in wire_files]), "the inputs' folder changed"
        n_inputs = len(wire_files) + len(drops)
        print(f"\nfuzz: seed {SEED}, {n_inputs} inputs ({len(wire_files)} C-STOREd: {statuses}; "
              f"{len(drops)} dropped ({N_VENDOR} vendor XML), {n_sidecars} with sidecars; {len(wfdb_drops)} WFDB "
              f"records) -> {expected_jobs} jobs: "
              f"{counts.get('done', 0)} done, {counts.get('rejected', 0)} rejected in {elapsed:.0f} s; "
              f"RSS {rss_before:.0f} MiB before, peak {rss_peak:.0f}, after {rss_after:.0f}")
        assert n_inputs >= 1000
    finally:
        assert service.stop() == 0


def safe_name(name: str) -> str:
    """A name the file system takes (the watched folder's door is a folder: no '/' in names)."""
    stem, _, suffix = name.replace("/", "_").replace("\0", "_").rpartition(".")
    return f"{stem[:150]}.{suffix}"


def _free_port() -> int:
    from peers import free_port

    return free_port()


def _jobs(service: Service) -> list[dict]:
    import sqlite3

    con = sqlite3.connect(f"file:{service.work / 'queue.sqlite3'}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT id, name, state, reason FROM jobs")]
    finally:
        con.close()
