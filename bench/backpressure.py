"""Load with back-pressure (not a test): `python bench/backpressure.py [--senders 4 16] [--seconds 60]`.

Measures, the way issue 10 measured the backlog growing without bound: `ecg-dicom serve`
(shipped lead-I model unless --checkpoint) with Orthanc as PACS, and N sender processes,
each a cart that C-STOREs distinct copies of a real ECG as fast as it is answered and, on
0xA700 Out of Resources, releases its association, waits --retry-s and sends the same
instance again on a new one. For each N:

  * offered stores/s (requests, A700 answers included), accepted stores/s (Success), and the
    number of A700 answers;
  * processed/s (jobs done, i.e. delivered to Orthanc);
  * queue depth (ecg_dicom_queue_backlog from /metrics, sampled every 0.5 s): median and max,
    against limits.queue_high_water;
  * latency from the accepted C-STORE to the result delivered to Orthanc, per job from the
    job store (accepted -> done), median and p95, over the jobs accepted while sending.

Run once without back-pressure (--high-water 100000) to see the unbounded backlog.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from peers import PACS_AET, Orthanc, Service, free_port, wait_for, write_config  # noqa: E402

from ecg_dicom.core.checkpoint import shipped_checkpoint_path  # noqa: E402

ECG = REPO.parent / "shared" / "data" / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"


def sender(port: int, stop_at: float, retry_s: float, results: "mp.Queue") -> None:
    """One cart: distinct instances on one association; on 0xA700 it releases the association
    (as DCMTK storescu stops), waits ``retry_s`` and sends the same instance on a new one."""
    from pynetdicom import AE

    ds = dcmread(ECG)
    ae = AE(ae_title="CART1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    sent = accepted = refused = 0
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assoc = None
    while time.time() < stop_at:
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", port, ae_title="ECGDICOM")
            if not assoc.is_established:
                time.sleep(retry_s)
                continue
        status = assoc.send_c_store(ds)
        sent += 1
        code = int(getattr(status, "Status", -1))
        if code == 0:
            accepted += 1
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        elif code == 0xA700:
            refused += 1
            assoc.release()
            time.sleep(retry_s)
        else:
            break
    if assoc is not None and assoc.is_established:
        assoc.release()
    results.put((sent, accepted, refused))


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None



def run(n_senders: int, seconds: float, high_water: int, retry_s: float, ckpt: Path, tmp: Path) -> dict:
    with Orthanc(tmp / f"orthanc{n_senders}") as pacs:
        http_port = free_port()
        cfg = write_config(tmp / f"site{n_senders}-{high_water}", ckpt,
                           pacs={"ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs.dicom_port},
                           worker={"batch_size": 8, "max_wait_s": 0.02}, max_associations=32,
                           http={"host": "127.0.0.1", "port": http_port}, limits={"queue_high_water": high_water})
        svc = Service(cfg).start(timeout=180)
        try:
            url = f"http://127.0.0.1:{http_port}/metrics"
            results: mp.Queue = mp.Queue()
            t0 = time.time()
            stop_at = t0 + seconds
            procs = [mp.Process(target=sender, args=(svc.port, stop_at, retry_s, results)) for _ in range(n_senders)]
            for p in procs:
                p.start()
            depth = []
            while time.time() < stop_at:
                with urllib.request.urlopen(url, timeout=10) as rsp:
                    depth.append(metric(rsp.read().decode(), "ecg_dicom_queue_backlog") or 0)
                time.sleep(0.5)
            outs = [results.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(60)
            elapsed = time.time() - t0
            with urllib.request.urlopen(url, timeout=10) as rsp:
                text = rsp.read().decode()
            done_in_window = metric(text, 'ecg_dicom_jobs_finished_total{outcome="done"}') or 0
            sent = sum(o[0] for o in outs)
            accepted = sum(o[1] for o in outs)
            refused = sum(o[2] for o in outs)
            wait_for(lambda: svc.settled(accepted), 3600, "the backlog to drain", interval=1.0)
            con = sqlite3.connect(f"file:{svc.work / 'queue.sqlite3'}?mode=ro", uri=True)
            latencies = sorted(u - c for c, u in con.execute(
                "SELECT created, updated FROM jobs WHERE state = 'done' AND created <= ?", (stop_at,)))
            con.close()
            return {"senders": n_senders, "high_water": high_water, "seconds": elapsed,
                    "offered_per_s": sent / elapsed, "accepted_per_s": accepted / elapsed, "a700": refused,
                    "processed_per_s": done_in_window / elapsed,
                    "depth_median": statistics.median(depth), "depth_max": max(depth),
                    "latency_p50": latencies[len(latencies) // 2],
                    "latency_p95": latencies[int(0.95 * (len(latencies) - 1))]}
        finally:
            svc.stop(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seconds", type=float, default=60.0, help="sending time per run (default 60)")
    parser.add_argument("--high-water", type=int, nargs="+", default=[100], help="limits.queue_high_water")
    parser.add_argument("--retry-s", type=float, default=1.0, help="a sender's wait after 0xA700 (default 1 s)")
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    ckpt = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint_path("I")
    with tempfile.TemporaryDirectory(prefix="bench-backpressure-") as tmp_name:
        for high_water in args.high_water:
            for n in args.senders:
                r = run(n, args.seconds, high_water, args.retry_s, ckpt, Path(tmp_name))
                print(f"senders {r['senders']:2d}, high water {r['high_water']:6d}: offered {r['offered_per_s']:6.1f}/s, "
                      f"accepted {r['accepted_per_s']:5.1f}/s, 0xA700 {r['a700']:5d}, processed {r['processed_per_s']:5.1f}/s; "
                      f"queue depth median {r['depth_median']:.0f}, max {r['depth_max']:.0f}; "
                      f"accepted -> in Orthanc median {r['latency_p50']:.1f} s, p95 {r['latency_p95']:.1f} s "
                      f"[{r['seconds']:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
