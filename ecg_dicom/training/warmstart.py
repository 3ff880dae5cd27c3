"""Warm start of the two-lead model (I+II -> V1–V6) from a trained one-lead model.

Why: a two-lead network trained from scratch costs a full run of the recipe; started from
the lead-I network it already reconstructs V1–V6 as well as that model does, and fine-tuning
only has to teach it what lead II adds. The surgery: the stem's first convolution gets
lead II's two feature channels (min-max, mV) as new input channels with zero weights (so
the warm model's output is exactly the lead-I model's), and the output head keeps only the
V1–V6 rows of the mean and of the log-variance (the other limb lead is now measured).

    python -m ecg_dicom.training.warmstart ecg_dicom/weights/lead_I.pt runs/warm_I+II.pt
    ecg-dicom train --input-lead I+II --init runs/warm_I+II.pt ...
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ecg_dicom.core.checkpoint import load_checkpoint, save_checkpoint
from ecg_dicom.core.model import BiLSTMAttentionModel
from ecg_dicom.leads import CHEST_LEADS, TWO_LEAD_INPUT, learned_leads


def widen_to_two_leads(model: BiLSTMAttentionModel, input_lead: str) -> BiLSTMAttentionModel:
    """A one-lead model for ``input_lead`` ("I" or "II") -> an I+II model with the same output
    on V1–V6 when lead II's (or I's) features are added: (2, L) -> (4, L) in, 7 -> 6 leads out."""
    old = model.config
    cfg = dataclasses.replace(old, in_features=2 * old.in_features, n_leads=len(CHEST_LEADS))
    new = BiLSTMAttentionModel(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = "stem.0.weight"
    w = state[first]  # (C, 2, k)
    wide = torch.zeros(w.shape[0], cfg.in_features, w.shape[2])
    offset = 0 if input_lead == "I" else old.in_features  # features are [I min-max, I mV, II min-max, II mV]
    wide[:, offset:offset + old.in_features] = w
    state[first] = wide
    last = f"head.{len(model.head) - 1}"
    keep = [learned_leads(input_lead).index(lead) for lead in CHEST_LEADS]
    rows = keep + ([old.n_leads + k for k in keep] if old.variance_head else [])
    state[f"{last}.weight"] = state[f"{last}.weight"][rows]
    state[f"{last}.bias"] = state[f"{last}.bias"][rows]
    new.load_state_dict(state)
    return new.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a one-lead checkpoint (lead I or II)")
    parser.add_argument("out", help="the I+II checkpoint to write (a start for `ecg-dicom train --init`)")
    parser.add_argument("--input-lead", default="I", choices=("I", "II"), help="the source's input lead")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.source, input_lead=args.input_lead)
    if not isinstance(ckpt.model, BiLSTMAttentionModel):
        parser.error("the source must be one network, not an ensemble")
    model = widen_to_two_leads(ckpt.model, args.input_lead)
    training = {"command": f"warm start from {Path(args.source).name} (ecg_dicom.training.warmstart)",
                "data": ckpt.training.get("data"), "seed": ckpt.training.get("seed"),
                "epochs": ckpt.training.get("epochs"), "date": ckpt.training.get("date"),
                "warm_start_of": ckpt.model_version}
    save_checkpoint(args.out, model, TWO_LEAD_INPUT, f"{ckpt.model_version}.warm_I_II", ckpt.preprocessing,
                    training, {})
    print(f"wrote {args.out} ({args.input_lead} -> {TWO_LEAD_INPUT}, warm start of {ckpt.model_version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
