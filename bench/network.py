"""Delivery transport benchmark (not a test): run `python bench/network.py [--n 15]`.

C-STOREs of one 12-lead result object (~240 KB, the Mortara cart ECG reconstructed from
lead I), back to back on one association, to DCMTK ``storescp`` (a DCMTK acceptor leaves
Nagle's algorithm on, as Orthanc does) and to Orthanc: median ms per store with
pynetdicom's socket defaults against our association handlers
(:data:`ecg_dicom.dicom.network.LOW_LATENCY_HANDLERS`: ``TCP_NODELAY``, ``TCP_QUICKACK``
after every PDU), measured in the same run. Ratio = ours / defaults (lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from pydicom import Dataset  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from peers import PACS_AET, Orthanc, StoreSCP  # noqa: E402

from ecg_dicom.dicom.network import LOW_LATENCY_HANDLERS  # noqa: E402
from ecg_dicom.dicom.writer import build_ecg_datasets  # noqa: E402
from ecg_dicom.inputs import load_lead  # noqa: E402

ECG = REPO.parent / "shared" / "data" / "dicom" / "12lead" / "mortara_eli250_waveform_ecg.dcm"


def result_object() -> Dataset:
    """A 12-lead result object of the real cart ECG (its 12 measured leads stand in for a
    reconstruction: the size and layout are what matter here)."""
    from ecg_dicom.dicom.reader import read_dicom_leads
    from ecg_dicom.leads import LEADS_12

    import numpy as np

    leads = read_dicom_leads(ECG)
    lead = load_lead(ECG, "I")
    return build_ecg_datasets(np.stack([leads[name] for name in LEADS_12]), lead.fs, "bench", "I", lead.dataset,
                              None)[0]


def per_store_ms(port: int, ds: Dataset, n: int, handlers: list) -> float:
    """Median ms of ``n`` C-STOREs back to back on one association."""
    ae = AE(ae_title="ECGDICOM")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=PACS_AET, evt_handlers=handlers)
    if not assoc.is_established:
        raise RuntimeError("association refused")
    times = []
    try:
        for _ in range(n):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            t0 = time.perf_counter()
            if assoc.send_c_store(ds).Status != 0:
                raise RuntimeError("C-STORE failed")
            times.append(time.perf_counter() - t0)
    finally:
        assoc.release()
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=15, help="stores per case (default 15)")
    args = parser.parse_args()
    ds = result_object()
    with tempfile.TemporaryDirectory(prefix="bench-network-") as tmp:
        with StoreSCP(Path(tmp) / "scp") as scp, Orthanc(Path(tmp) / "orthanc") as pacs:
            for name, port in (("storescp", scp.port), ("Orthanc", pacs.dicom_port)):
                plain = per_store_ms(port, ds, args.n, [])
                ours = per_store_ms(port, ds, args.n, LOW_LATENCY_HANDLERS)
                print(f"C-STORE back to back to {name}: pynetdicom defaults {plain:.1f} ms, ours {ours:.1f} ms per store"
                      f"  ratio {ours / plain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
