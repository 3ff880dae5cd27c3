"""True vs reconstructed 12-lead overlays in the usual 3 x 4 layout (docs/reconstruction.png).

    python -m ecg_dicom.training.figure --out docs/reconstruction.png [--data ../shared/data/ecg12] \
        "TITLE=CHECKPOINT=RECORD" ...

RECORD is a record name as the loaders give it (``ptbxl/00002_hr``, found under --data
wherever its database keeps it) or a WFDB header path. Each item is drawn with the
checkpoint that never trained on the record (the caller picks it). Columns are consecutive 2.5 s segments, as on a paper ECG; black = recorded,
red = reconstructed; every lead high-passed at 0.5 Hz.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.preprocess import highpass
from ecg_dicom.leads import LEADS_12
from ecg_dicom.training.baselines import BASELINE_FS, protocol_window
from ecg_dicom.training.data import find_record, read_wfdb_record
from ecg_dicom.training.evaluate import lead_metrics

LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
SEGMENT_S = 2.5


def plot_reconstructions(items: Sequence[tuple[str, Path, str]], out: str | Path, input_lead: str = "I",
                         data: str | Path = "../shared/data/ecg12") -> Path:
    """items: (title, checkpoint, record name or WFDB header). Writes one PNG with a 3 x 4
    block per record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3 * len(items), 4, figsize=(16, 2.2 * 3 * len(items)), sharey="row", squeeze=False)
    seg = int(SEGMENT_S * BASELINE_FS)
    for block, (title, ckpt, header) in enumerate(items):
        rec = read_wfdb_record(header) if str(header).endswith(".hea") else find_record(data, str(header))
        true = protocol_window(rec.leads, rec.fs)
        recon = Reconstructor.from_checkpoint(ckpt, input_lead, precision="fp32").reconstruct(true[LEADS_12.index(input_lead)], BASELINE_FS)
        true, pred = highpass(true, BASELINE_FS) / 1000, highpass(recon.astype(np.float64), BASELINE_FS) / 1000
        for row, leads in enumerate(LAYOUT):
            for col, lead in enumerate(leads):
                ax = axes[3 * block + row, col]
                k = LEADS_12.index(lead)
                t = np.arange(col * seg, (col + 1) * seg) / BASELINE_FS
                ax.plot(t, true[k, col * seg:(col + 1) * seg], "k", lw=0.8)
                if lead != input_lead:
                    ax.plot(t, pred[k, col * seg:(col + 1) * seg], "r", lw=0.8, alpha=0.8)
                r = lead_metrics(pred[k], true[k])["r"]
                label = f"{lead} (input)" if lead == input_lead else f"{lead}  r={r:.2f}"
                ax.set_title(label, fontsize=8, loc="left", pad=2)
                ax.tick_params(labelsize=6)
                ax.grid(alpha=0.3)
    fig.suptitle(f"Recorded (black) vs reconstructed from lead {input_lead} (red), mV, 0.5 Hz high-pass", fontsize=11)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.03, top=0.95, wspace=0.06, hspace=0.55)
    for block, (title, _, _) in enumerate(items):
        box = axes[3 * block, 0].get_position()
        fig.text(box.x0, box.y1 + 0.012, title, fontsize=10, weight="bold")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", help="TITLE=CHECKPOINT=RECORD (a record name or a .hea path)")
    parser.add_argument("--out", default="docs/reconstruction.png")
    parser.add_argument("--input-lead", default="I")
    parser.add_argument("--data", default="../shared/data/ecg12", help="folder of the database folders")
    args = parser.parse_args(argv)
    items = [(t, Path(c), h) for t, c, h in (item.split("=", 2) for item in args.items)]
    print(plot_reconstructions(items, args.out, args.input_lead, args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
