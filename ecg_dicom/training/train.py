"""`ecg-dicom train`: fit a BiLSTM + Attention checkpoint on real (and synthetic) 12-lead ECGs.

Recipe: records are resampled to the model rate and high-passed at 0.5 Hz (the targets,
in mV, keep their absolute amplitude); each step draws random crops with augmentation
(time stretch, common amplitude scale, and on the input only what real carts deliver:
baseline wander and offsets of several mV, powerline hum, EMG noise, a lower acquisition
rate, clipping, noise bursts and electrode pops), then the input is high-passed as
inference does. The loss is MSE in mV plus a correlation term, a log std-ratio term
(against amplitude collapse) and a Gaussian NLL for the variance head (per-lead
confidence); on records stored at a rate below the model's (PTB-XL's 100 Hz copies,
band-limited to 50 Hz) it compares prediction and target low-passed alike, so they teach
what they hold without teaching the model to blur. A patient-grouped validation split
(fixed seed) is monitored every epoch. Same command + same machine -> same weights.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import logging
import math
import shlex
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import signal as sps
from tqdm import tqdm

from ecg_dicom import __version__
from ecg_dicom.core.checkpoint import Preprocessing, load_checkpoint, save_checkpoint
from ecg_dicom.core.model import BiLSTMAttentionModel, EnsembleModel, ModelConfig
from ecg_dicom.core.preprocess import (
    highpass,
    lead_features,
    resample_fs,
    resample_signal,
)
from ecg_dicom.errors import CheckpointError
from ecg_dicom.leads import LEADS_12, input_leads_of, learned_leads
from ecg_dicom.training.baselines import fit_baselines_on_records
from ecg_dicom.training.data import (
    Record,
    in_patient_fold,
    load_synthetic,
    load_wfdb_records,
    parse_patient_fold,
    split_records,
)

log = logging.getLogger(__name__)

# Loss weights: MSE in mV², 1 - Pearson r, (log std ratio)², Gaussian NLL of the variance head.
W_MSE, W_CORR, W_STD, W_NLL = 10.0, 1.0, 1.0, 0.1
FLAT_TARGET_MV = 0.01  # target leads with a std under 10 µV (dead electrodes) carry no r/std loss
BAND_LIMIT_TAPS = 41     # FIR low-pass applied to prediction and target of band-limited records


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings recorded in every checkpoint."""

    epochs: int = 40
    batch_size: int = 16
    steps_per_epoch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    split_seed: int = 0  # fixed apart from seed, so members of an ensemble hold out the same records
    threads: int = 1
    real_fraction: float = 0.5  # share of real crops per batch when synthetic records are mixed in
    shape_share: float = 0.5    # share of the real crops drawn from amplitude-normalised records (LUDB)
    lowrate_weight: float = 1.0  # how often a record stored below the model rate is drawn vs a full-rate one
    ectopic_weight: float = 1.0  # how often a record with ectopic beats (beats.ectopic_beat_count) is drawn
    db_power: float = 1.0       # a database's share of the physical-amplitude crops ~ (its records)^db_power
    std_weight: float = W_STD   # weight of the (log std ratio)² term (amplitude collapse)
    band_limited_loss: bool = True
    crop: int = 0               # training crop in samples at the model rate (0: the inference window)
    select: str = "best"        # "best": the epoch of lowest validation loss; "last": the final weights


MODEL_SIZE_ARGS = ("stem_channels", "stride", "hidden", "lstm_layers", "heads", "stem_kernel",
                   "down_channels", "head_channels", "head_kernel", "upsample")  # train's model-size flags


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges (probabilities and amplitudes in µV). The defaults are what real
    carts deliver (issue 15); :data:`LEGACY_AUGMENT` is the first shipped models' set."""

    stretch: float = 0.10          # time stretch factor in exp(±stretch) (heart-rate variety)
    scale: tuple[float, float] = (0.7, 1.4)  # common amplitude scale, log-uniform
    p_low_fs: float = 0.3          # input acquired at 100–200 Hz, then interpolated
    p_wander: float = 0.7
    wander_uv: float = 1500.0      # respiration / movement drift, 0.05–0.5 Hz
    offset_uv: float = 5000.0      # DC offset of the electrode-skin interface
    p_powerline: float = 0.3
    powerline_uv: float = 100.0
    p_emg: float = 0.5
    emg_uv: float = 50.0
    p_clip: float = 0.1            # the amplifier saturates: peaks cut at 50–95 % of their height
    p_burst: float = 0.15          # a 0.2–2 s noise burst (movement, shivering) of up to burst_uv
    burst_uv: float = 300.0
    p_pop: float = 0.05            # an electrode pop: a step of up to pop_uv decaying over ~0.3 s
    pop_uv: float = 2000.0


LEGACY_AUGMENT = Augment(wander_uv=300.0, offset_uv=300.0, powerline_uv=40.0, emg_uv=30.0,
                         p_clip=0.0, p_burst=0.0, p_pop=0.0)
AUGMENTS = {"carts": Augment(), "legacy": LEGACY_AUGMENT}


@dataclass
class Prepared:
    """One record at the model rate: input lead (N,) µV (or leads (2, N) for the two-lead
    model) and learned leads (n_out, N) µV,
    both high-passed at 0.5 Hz. band_limited: stored at a rate below the model's, so its
    content above half that rate is missing (PTB-XL's 100 Hz copies)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    amplitude_reliable: bool = True
    band_limited: bool = False
    ectopic: bool = False
    database: str = ""


def prepare_records(records: Sequence[Record], input_lead: str, fs: float) -> list[Prepared]:
    """Resample to ``fs`` and high-pass every record; keep the input and learned leads."""
    idx_in = [LEADS_12.index(lead) for lead in input_leads_of(input_lead)]
    idx_in = idx_in[0] if len(idx_in) == 1 else idx_in
    idx_out = [LEADS_12.index(lead) for lead in learned_leads(input_lead)]
    out = []
    for rec in records:
        leads = highpass(resample_fs(rec.leads, rec.fs, fs), fs)
        out.append(Prepared(rec.name, leads[idx_in].astype(np.float32), leads[idx_out].astype(np.float32),
                            rec.amplitude_reliable, band_limited=rec.fs < fs, database=rec.database))
    return out


def _crop(rec: Prepared, length: int, rng: np.random.Generator, aug: Augment | None) -> tuple[np.ndarray, np.ndarray]:
    """A random (or, with aug=None, the first) crop of ``length`` samples, time-stretched."""
    n = rec.x.shape[-1]
    span = length if aug is None else int(round(length * math.exp(rng.uniform(-aug.stretch, aug.stretch))))
    span = min(span, n)
    start = 0 if aug is None else int(rng.integers(0, n - span + 1))
    x, y = rec.x[..., start:start + span], rec.y[:, start:start + span]
    if span != length:
        x, y = resample_signal(x, length), resample_signal(y, length)
    return np.asarray(x, np.float64), np.asarray(y, np.float64)


def augment_input(x: np.ndarray, fs: float, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """What a real input shows on top of the clean lead: (L,) µV -> (L,) µV.

    Draws stay in the legacy order (low rate, wander, hum, EMG, offset) so that
    :data:`LEGACY_AUGMENT` reproduces the first shipped models' inputs; clipping, noise
    bursts and electrode pops are drawn only when their probability is above zero.
    """
    n = x.size
    t = np.arange(n) / fs
    if rng.random() < aug.p_low_fs:
        low = rng.uniform(100.0, 200.0)
        x = resample_fs(resample_fs(x, fs, low), low, fs, length=n)
    if rng.random() < aug.p_wander:
        for _ in range(int(rng.integers(1, 3))):
            x = x + rng.uniform(0, aug.wander_uv) * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi))
    if rng.random() < aug.p_powerline:
        x = x + rng.uniform(0, aug.powerline_uv) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t + rng.uniform(0, 2 * np.pi))
    if rng.random() < aug.p_emg:
        x = x + rng.normal(0, rng.uniform(0, aug.emg_uv), n)
    if aug.p_burst and rng.random() < aug.p_burst:
        span = int(rng.uniform(0.2, 2.0) * fs)
        start = int(rng.integers(0, max(1, n - span)))
        x = x.copy()
        x[start:start + span] += rng.normal(0, rng.uniform(0.3, 1.0) * aug.burst_uv, x[start:start + span].size)
    if aug.p_pop and rng.random() < aug.p_pop:
        start = int(rng.integers(0, n))
        x = x.copy()
        x[start:] += rng.uniform(-aug.pop_uv, aug.pop_uv) * np.exp(-(np.arange(n - start) / fs) / rng.uniform(0.1, 0.5))
    x = x + rng.uniform(-aug.offset_uv, aug.offset_uv)
    if aug.p_clip and rng.random() < aug.p_clip:
        mid = float(np.median(x))
        top, bottom = float(x.max()) - mid, mid - float(x.min())
        level = rng.uniform(0.5, 0.95)
        x = np.clip(x, mid - bottom * (level if rng.random() < 0.5 else 1.0), mid + top * level)
    return x


def make_batch(recs: Sequence[Prepared], picks: Sequence[int], length: int, fs: float,
               rng: np.random.Generator, aug: Augment | None,
               highpass_hz: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (B, 2, L) float32 ((B, 4, L) for two input leads), targets (B, n_out, L) float32 mV, the (B,) amplitude
    mask (1 where the record's amplitudes are physical) and the (B,) band-limit mask (1 for
    records stored below the model rate) for records ``picks``. With ``highpass_hz`` the
    (augmented) input is high-passed as :class:`Reconstructor` does before the model."""
    xs, ys = [], []
    for i in picks:
        x, y = _crop(recs[i], length, rng, aug)
        if aug is not None:
            gain = math.exp(rng.uniform(math.log(aug.scale[0]), math.log(aug.scale[1])))
            x = x * gain
            x = augment_input(x, fs, rng, aug) if x.ndim == 1 else np.stack([augment_input(row, fs, rng, aug) for row in x])
            y = y * gain
        xs.append(x)
        ys.append(y / 1000.0)
    x_all = np.stack(xs)
    if highpass_hz:
        x_all = highpass(x_all, fs, highpass_hz)
    amp = torch.tensor([float(recs[i].amplitude_reliable) for i in picks])
    band = torch.tensor([float(recs[i].band_limited) for i in picks])
    n_in = 1 if x_all.ndim == 2 else x_all.shape[1]
    return torch.from_numpy(lead_features(x_all, n_in)), torch.from_numpy(np.stack(ys).astype(np.float32)), amp, band


def band_limit_kernel(fs: float, cutoff_hz: float = 40.0) -> torch.Tensor:
    """(1, 1, taps) linear-phase FIR low-pass at ``cutoff_hz`` for signals at ``fs`` Hz."""
    taps = sps.firwin(BAND_LIMIT_TAPS, cutoff_hz, fs=fs)
    return torch.tensor(taps, dtype=torch.float32).view(1, 1, -1)


def band_limit(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(B, C, L) -> (B, C, L) low-passed with ``kernel`` (edges padded by reflection)."""
    b, c, n = signal.shape
    pad = kernel.shape[-1] // 2
    flat = torch.nn.functional.pad(signal.reshape(b * c, 1, n), (pad, pad), mode="reflect")
    return torch.nn.functional.conv1d(flat, kernel).reshape(b, c, n)


def reconstruction_loss(mean: torch.Tensor, log_var: torch.Tensor | None, target: torch.Tensor,
                        amp: torch.Tensor | None = None, band: torch.Tensor | None = None,
                        band_kernel: torch.Tensor | None = None,
                        std_weight: float = W_STD) -> tuple[torch.Tensor, dict[str, float]]:
    """mean, log_var, target: (B, leads, L) in mV / log mV²; amp: (B,) 1 where the target's
    amplitude is physical. Records with amp 0 only teach the shape (correlation term);
    MSE, std ratio and NLL use the others. band: (B,) 1 for band-limited records, whose
    prediction and target are both low-passed with ``band_kernel`` before every term.
    Returns (loss, parts)."""
    amp = torch.ones(mean.shape[0]) if amp is None else amp
    if band is not None and band_kernel is not None and bool(band.any()):
        sel = band.bool()[:, None, None]
        mean = torch.where(sel, band_limit(mean, band_kernel), mean)
        target = torch.where(sel, band_limit(target, band_kernel), target)
    n_amp = amp.sum().clamp(min=1.0)
    mse = ((mean - target).pow(2).mean((1, 2)) * amp).sum() / n_amp
    mc = mean - mean.mean(-1, keepdim=True)
    tc = target - target.mean(-1, keepdim=True)
    sp = mc.pow(2).mean(-1).add(1e-8).sqrt()
    st = tc.pow(2).mean(-1).add(1e-8).sqrt()
    live = (st > FLAT_TARGET_MV).float()
    r = (mc * tc).mean(-1) / (sp * st)
    corr = ((1 - r) * live).sum() / live.sum().clamp(min=1.0)
    live_amp = live * amp[:, None]
    std = ((torch.log(sp + 1e-4) - torch.log(st + 1e-4)).pow(2) * live_amp).sum() / live_amp.sum().clamp(min=1.0)
    loss = W_MSE * mse + W_CORR * corr + std_weight * std
    parts = {"mse": mse.item(), "r": 1 - corr.item(), "std": std.item()}
    if log_var is not None:
        nll = ((0.5 * (log_var + (target - mean.detach()).pow(2) / log_var.exp())).mean((1, 2)) * amp).sum() / n_amp
        loss = loss + W_NLL * nll
        parts["nll"] = nll.item()
    return loss, parts


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the weights in key order: the tail of a model version names its weights."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def sampling_weights(train_recs: Sequence[Prepared], n_extra: int, cfg: TrainConfig) -> np.ndarray:
    """Probability of drawing each record (real ones, then ``n_extra`` synthetic ones) for a crop.

    Three pools: real records with physical amplitudes, real records with normalised
    amplitudes (shape only, LUDB), synthetic records. Synthetic records get
    ``1 - cfg.real_fraction`` of the crops, the shape-only pool ``cfg.shape_share`` of the
    real ones; inside the real pools a band-limited record (stored below the model rate)
    weighs ``cfg.lowrate_weight`` against a full-rate one, and a record with ectopic beats
    ``cfg.ectopic_weight`` against one without. In the physical-amplitude pool a database of
    n records gets a share ~ n^``cfg.db_power`` (1: in proportion to its size; 0.5: PTB-XL's
    ~2,000 records weigh ~7x a 40-record hospital, not 50x). Empty pools give their share to
    the others.
    """
    physical = np.array([r.amplitude_reliable for r in train_recs], dtype=bool)
    per_record = np.array([(cfg.lowrate_weight if r.band_limited else 1.0) * (cfg.ectopic_weight if r.ectopic else 1.0)
                           for r in train_recs])
    if cfg.db_power != 1.0 and len(train_recs):
        sizes = Counter(r.database for r, ok in zip(train_recs, physical) if ok)
        per_record = per_record * np.array([sizes[r.database] ** (cfg.db_power - 1.0) if ok else 1.0
                                            for r, ok in zip(train_recs, physical)])
    pools = [np.flatnonzero(physical), np.flatnonzero(~physical), np.arange(len(train_recs), len(train_recs) + n_extra)]
    shares = [cfg.real_fraction * (1 - cfg.shape_share), cfg.real_fraction * cfg.shape_share, 1 - cfg.real_fraction]
    weights = np.zeros(len(train_recs) + n_extra)
    inner = np.concatenate([per_record, np.ones(n_extra)])
    for pool, share in zip(pools, shares):
        if pool.size and inner[pool].sum() > 0:
            weights[pool] = share * inner[pool] / inner[pool].sum()
    if weights.sum() <= 0:
        raise ValueError("no training records to draw from")
    return weights / weights.sum()


def train_model(train_recs: Sequence[Prepared], val_recs: Sequence[Prepared], input_lead: str,
                pre: Preprocessing, cfg: TrainConfig, model_config: ModelConfig,
                init_state: dict | None = None, aug: Augment = Augment(),
                progress: bool = True, extra_recs: Sequence[Prepared] = ()) -> tuple[BiLSTMAttentionModel, dict]:
    """Train and return (best model by validation loss, history).

    ``extra_recs``: synthetic records mixed in beside the real ones (see :func:`batch_pools`).
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(cfg.seed)
    model = BiLSTMAttentionModel(model_config)
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    crop = cfg.crop or pre.window
    kernel = band_limit_kernel(pre.fs) if cfg.band_limited_loss else None
    val_batches = []
    for i in range(0, len(val_recs), cfg.batch_size):
        picks = list(range(i, min(i + cfg.batch_size, len(val_recs))))
        val_batches.append(make_batch(val_recs, picks, pre.window, pre.fs, rng, None, pre.highpass_hz))
    history: dict = {"val_loss": [], "val_r": [], "train_loss": []}
    best_state, best_loss, best_epoch = None, math.inf, cfg.epochs
    weights = sampling_weights(train_recs, len(extra_recs), cfg)
    all_recs = [*train_recs, *extra_recs]
    bar = tqdm(total=total, desc=f"train lead {input_lead}", disable=not progress, dynamic_ncols=True,
               mininterval=30.0)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        running = 0.0
        for _ in range(cfg.steps_per_epoch):
            picks = rng.choice(len(all_recs), size=cfg.batch_size, p=weights).tolist()
            feats, target, amp, band = make_batch(all_recs, picks, crop, pre.fs, rng, aug, pre.highpass_hz)
            mean, log_var = model(feats)
            loss, _ = reconstruction_loss(mean, log_var, target, amp, band, kernel, cfg.std_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
        history["train_loss"].append(running / cfg.steps_per_epoch)
        if val_batches:
            model.eval()
            with torch.no_grad():
                parts = [reconstruction_loss(*model(f), t, a, b, kernel, cfg.std_weight) for f, t, a, b in val_batches]
            v_loss = float(np.mean([float(p[0]) for p in parts]))
            v_r = float(np.mean([p[1]["r"] for p in parts]))
            history["val_loss"].append(v_loss)
            history["val_r"].append(v_r)
            bar.set_postfix(epoch=epoch, loss=f"{history['train_loss'][-1]:.3f}", val=f"{v_loss:.3f}",
                            val_r=f"{v_r:.3f}", refresh=False)
            if v_loss < best_loss:
                best_loss, best_epoch = v_loss, epoch
                if cfg.select == "best":
                    best_state = copy.deepcopy(model.state_dict())
            log.info("epoch %d: train loss %.4f, validation loss %.4f, r %.4f", epoch,
                     history["train_loss"][-1], v_loss, v_r)
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    history["best_epoch"] = best_epoch
    history["kept_epoch"] = best_epoch if best_state is not None else cfg.epochs
    model.eval()
    return model, history


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ecg-dicom train``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = dt.datetime.now(dt.timezone.utc)
    input_lead = args.input_lead
    pre = Preprocessing(fs=args.model_fs, window=int(round(args.window_s * args.model_fs)),
                        hop=int(round(args.hop_s * args.model_fs)) if args.hop_s else
                        int(round(args.window_s * args.model_fs)) // 2,
                        highpass_hz=args.input_highpass)
    crop = int(round(args.crop_s * args.model_fs)) if args.crop_s else 0
    try:
        size = {k: getattr(args, k) for k in MODEL_SIZE_ARGS if getattr(args, k, None) is not None}
        model_config = ModelConfig(in_features=2 * len(input_leads_of(input_lead)),
                                   n_leads=len(learned_leads(input_lead)), **size)
        BiLSTMAttentionModel(model_config)
        folds = [parse_patient_fold(spec) for spec in args.patient_fold]
    except ValueError as exc:
        print(f"error: model size: {exc}" if "fold" not in str(exc) else f"error: {exc}", file=sys.stderr)
        return 2
    for name, length in (("window", pre.window), ("crop", crop)):
        if length % model_config.stride:
            print(f"error: --stride {model_config.stride} does not divide the {length}-sample {name}", file=sys.stderr)
            return 2
    if not 0 < pre.hop <= pre.window:
        print(f"error: hop of {pre.hop} samples must be in 1..{pre.window}", file=sys.stderr)
        return 2
    records = load_wfdb_records(args.real, exclude_db=args.exclude_db) if args.real else []
    held_out_fold = [r.name for r in records if in_patient_fold(r, folds)]
    records = [r for r in records if not in_patient_fold(r, folds)]
    real_names = [r.name for r in records]
    if args.synthetic:
        cache = args.synthetic_dir or "data_cache/synthetic"
        records = records + load_synthetic(args.synthetic, cache, seed=0)
    if not records:
        print("no training records: give --real folders and/or --synthetic N", file=sys.stderr)
        return 2
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, split_seed=args.split_seed, threads=args.threads,
                      steps_per_epoch=args.steps_per_epoch, real_fraction=args.real_fraction, lr=args.lr,
                      batch_size=args.batch_size, shape_share=args.shape_share, lowrate_weight=args.lowrate_weight,
                      band_limited_loss=args.band_limited_loss, crop=crop, select=args.select,
                      ectopic_weight=args.ectopic_weight, db_power=args.db_power, std_weight=args.std_weight)
    aug = AUGMENTS[args.augment]
    init_state, pretraining = None, None
    if args.init:
        try:
            init = load_checkpoint(args.init, input_lead=input_lead)
        except CheckpointError as exc:
            print(f"error: --init: {exc}", file=sys.stderr)
            return 2
        if isinstance(init.model, EnsembleModel):
            print(f"error: --init {args.init} is an ensemble; fine-tune one of its members instead", file=sys.stderr)
            return 2
        model_config, pre, init_state = init.model.config, init.preprocessing, init.model.state_dict()
        pretraining = {k: init.training.get(k) for k in ("command", "data", "seed", "epochs", "date")}
        pretraining["model_version"] = init.model_version
    # validation is real when there is real data; synthetic records then all train (mixed in)
    synthetic_names = [r.name for r in records if r.database == "synthetic"]
    by_name = {r.name: r for r in records}
    train_names, val_names = split_records(real_names or synthetic_names, cfg.val_fraction, cfg.split_seed,
                                           groups={n: by_name[n].patient or n for n in real_names} or None)
    extra_names = synthetic_names if real_names else []
    log.info("training on %d records (+%d synthetic mixed in), validating on %d%s",
             len(train_names), len(extra_names), len(val_names),
             f"; {len(held_out_fold)} records of patient folds {', '.join(args.patient_fold)} held out"
             if folds else "")
    prepared = {r.name: p for r, p in zip(records, prepare_records(records, input_lead, pre.fs))}
    for name in extra_names:  # beside real data, synthetic records teach shape, not amplitude
        prepared[name].amplitude_reliable = False
    if cfg.ectopic_weight != 1.0:
        from ecg_dicom.training.beats import ectopic_beat_count

        all_leads = list(range(1 + len(learned_leads(input_lead))))
        for name in train_names:
            p = prepared[name]
            p.ectopic = ectopic_beat_count(np.vstack([p.x[None], p.y]), all_leads[1:], pre.fs) > 0
        log.info("%d of %d training records have ectopic beats", sum(prepared[n].ectopic for n in train_names),
                 len(train_names))
    model, history = train_model([prepared[n] for n in train_names], [prepared[n] for n in val_names],
                                 input_lead, pre, cfg, model_config, init_state, aug=aug,
                                 extra_recs=[prepared[n] for n in extra_names])
    train_real = [by_name[n] for n in train_names if n in set(real_names)]
    baselines = fit_baselines_on_records(train_real or [by_name[n] for n in train_names], input_lead)
    train_databases = Counter(by_name[n].database for n in [*train_names, *extra_names])
    training = {
        "command": "ecg-dicom train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 1 and sys.argv[1] == "train" else "ecg-dicom train (API call)",
        "data": {
            "real_folders": [str(p) for p in args.real],
            "excluded_databases": list(args.exclude_db),
            "patient_folds": list(args.patient_fold),
            "databases": dict(train_databases),
            "synthetic": int(args.synthetic),
            "train_records": [n for n in train_names if not n.startswith("synthetic/")],
            "init": str(args.init) if args.init else None,
        },
        "pretraining": pretraining,
        "held_out": {"validation_records": val_names, "excluded_databases": list(args.exclude_db),
                     "patient_folds": list(args.patient_fold), "patient_fold_records": len(held_out_fold)},
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "config": asdict(cfg),
        "augment": {"name": args.augment, **asdict(aug)},
        "loss_weights": {"mse": W_MSE, "corr": W_CORR, "std": cfg.std_weight, "nll": W_NLL},
        "history": history,
        "baselines": {kind: b.to_dict() for kind, b in baselines.items()},
        "flops_per_window": model.flops(pre.window),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train_seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
        "torch": str(torch.__version__),
    }
    version = f"{__version__}+lead{input_lead.replace('+', '_')}.{weights_hash(model)[:10]}"
    kept = history["kept_epoch"]
    metrics = {"validation": {"loss": history["val_loss"][kept - 1] if history["val_loss"] else None,
                              "r": history["val_r"][kept - 1] if history["val_r"] else None}}
    save_checkpoint(args.out, model, input_lead, version, pre, training, metrics)
    log.info("wrote %s (model version %s, kept epoch %d, best epoch %d, %.0f s)", args.out, version, kept,
             history["best_epoch"], training["train_seconds"])
    return 0
