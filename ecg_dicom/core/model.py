"""The BiLSTM + Attention model that maps one lead to the leads that must be learned.

Only the network lives here; preprocessing and the inverse scaling are in
:mod:`ecg_dicom.core.inference`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

__all__ = ["ModelConfig", "Attention", "BiLSTMAttentionModel", "EnsembleModel"]

LOG_VAR_RANGE = (-12.0, 6.0)  # log mV²: σ from 2.5 µV to 20 mV


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters; stored in every checkpoint so the model can be rebuilt exactly.

    in_features: per-sample input features (min-max scaled lead, lead in mV).
    n_leads: learned output leads (II or I, then V1–V6).
    stem_channels: width of the convolutional stem and of the decoder.
    stride: the LSTM runs at fs / stride (a 250 Hz window of 1250 -> 250 steps).
    hidden: LSTM hidden size per direction; lstm_layers: stacked bidirectional layers.
    heads: attention heads over time; variance_head: also predict a per-lead log-variance.
    stem_kernel: kernel of the two full-rate stem convolutions.
    down_channels: width of the strided convolution that feeds the LSTM (0: stem_channels).
    head_channels: width of the full-rate head convolution and of the upsampled LSTM
    features it reads beside the stem's (0: stem_channels); head_kernel: its kernel.
    upsample: how the LSTM rate is brought back to the model rate: "transposed" (a
    transposed convolution with kernel = stride, the first models'; at stride 10 it leaves
    a visible ripple at the LSTM rate) or "linear" (a 1x1 convolution at the LSTM rate, then
    linear interpolation: smooth, and a tenth of the FLOPs).
    The defaults are the first shipped models'; the full-rate convolutions cost most of
    the FLOPs (see :meth:`BiLSTMAttentionModel.flops`), so a cheaper model narrows them.
    """

    in_features: int = 2
    n_leads: int = 7
    stem_channels: int = 64
    stride: int = 5
    hidden: int = 64
    lstm_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    variance_head: bool = True
    stem_kernel: int = 7
    down_channels: int = 0
    head_channels: int = 0
    head_kernel: int = 5
    upsample: str = "transposed"

    @property
    def lstm_input(self) -> int:
        return self.down_channels or self.stem_channels

    @property
    def head_width(self) -> int:
        return self.head_channels or self.stem_channels

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    """Multi-head self-attention over time with a residual connection and layer norm.

    Lets every time step of the BiLSTM output look at the whole window (e.g. the beat that
    matches the current one), which a recurrence carries only lossily.
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by {heads} heads")
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, dim) -> (batch, time, dim)."""
        context, _ = self.attn(x, x, x, need_weights=False)
        # N x T x D
        return self.norm(x + context)


class BiLSTMAttentionModel(nn.Module):
    """Conv stem -> BiLSTM -> attention -> upsampling head, one output channel per lead.

    Input: (batch, in_features, L) with L a multiple of ``stride``.
    Output: (batch, n_leads, L) in mV, and with ``variance_head`` also a
    (batch, n_leads, L) log-variance (mV²) used for per-lead confidence.
    """

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        c, h, k = config.stem_channels, config.hidden, config.stem_kernel
        d, e, kh = config.lstm_input, config.head_width, config.head_kernel
        if k % 2 == 0 or kh % 2 == 0:
            raise ValueError(f"stem and head kernels must be odd, got {k} and {kh}")
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv1d(config.in_features, c, kernel_size=k, padding=k // 2), nn.GELU(),
            nn.Conv1d(c, c, kernel_size=k, padding=k // 2), nn.GELU(),
        )
        self.down = nn.Conv1d(c, d, kernel_size=config.stride, stride=config.stride)
        self.lstm = nn.LSTM(
            d, h, num_layers=config.lstm_layers, batch_first=True, bidirectional=True,
            dropout=config.dropout if config.lstm_layers > 1 else 0.0,
        )
        self.attention = Attention(2 * h, config.heads, config.dropout)
        if config.upsample == "transposed":
            self.up = nn.ConvTranspose1d(2 * h, e, kernel_size=config.stride, stride=config.stride)
        elif config.upsample == "linear":
            self.up = nn.Conv1d(2 * h, e, kernel_size=1)
        else:
            raise ValueError(f"upsample must be 'transposed' or 'linear', got {config.upsample!r}")
        self.head = nn.Sequential(
            nn.Conv1d(e + c, e, kernel_size=kh, padding=kh // 2), nn.GELU(),
            nn.Conv1d(e, config.n_leads * (2 if config.variance_head else 1), kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (N, F, L) -> (mean (N, leads, L) mV, log-variance (N, leads, L) or None)."""
        if x.shape[-1] % self.config.stride:
            raise ValueError(f"length {x.shape[-1]} is not a multiple of stride {self.config.stride}")
        skip = self.stem(x)
        # N x C x L
        z = self.down(skip).transpose(1, 2)
        # N x T x C   (T = L / stride)
        z, _ = self.lstm(z)
        # N x T x 2H
        z = self.attention(z).transpose(1, 2)
        # N x 2H x T
        z = self.up(z)
        if self.config.upsample == "linear":
            z = nn.functional.interpolate(z, scale_factor=self.config.stride, mode="linear", align_corners=False)
        # N x C x L
        out = self.head(torch.cat([z, skip], dim=1))
        # N x leads(x2) x L
        if not self.config.variance_head:
            return out, None
        mean, log_var = out.chunk(2, dim=1)
        return mean, log_var.clamp(*LOG_VAR_RANGE)

    def flops(self, length: int) -> float:
        """FLOPs (2 per multiply-add) of one forward pass over a window of ``length`` samples
        at the model rate: convolutions, LSTM gates, attention projections and scores
        (activations, norms and the LSTM's element-wise gate arithmetic left out: < 2 %)."""
        return float(sum(self.flops_breakdown(length).values()))

    def flops_breakdown(self, length: int) -> dict[str, float]:
        """:meth:`flops` by part: ``conv`` (stem, down, up, head), ``lstm``, ``attention``."""
        cfg = self.config
        c, h, s, d, e = cfg.stem_channels, cfg.hidden, cfg.stride, cfg.lstm_input, cfg.head_width
        t = length // s
        out_ch = cfg.n_leads * (2 if cfg.variance_head else 1)
        conv = 2 * length * cfg.stem_kernel * (cfg.in_features * c + c * c)   # full-rate stem
        conv += 2 * t * s * c * d                                              # strided down
        conv += 2 * (length if cfg.upsample == "transposed" else t) * 2 * h * e  # up to the model rate
        conv += 2 * length * (cfg.head_kernel * (e + c) * e + e * out_ch)      # full-rate head
        lstm, inp = 0.0, d
        for _ in range(cfg.lstm_layers):
            lstm += 2 * 2 * t * 4 * h * (inp + h)                              # both directions
            inp = 2 * h
        dim = 2 * h
        attn = 2 * t * 4 * dim * dim + 2 * 2 * t * t * dim                     # q, k, v, out + scores
        return {"conv": float(conv), "lstm": float(lstm), "attention": float(attn)}


class EnsembleModel(nn.Module):
    """Several independently trained :class:`BiLSTMAttentionModel` members, averaged.

    Why: on held-out databases the mean of members trained from different starts (and on
    different data mixes) reconstructs better than any one of them, and the spread between
    members is an uncertainty signal that a single variance head lacks. Same input and
    output as one member; the log-variance is that of the mixture: the members' mean
    variance plus the variance of their means (spread alone when members have no head).
    """

    def __init__(self, members: Sequence[BiLSTMAttentionModel]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0].config
        for m in members[1:]:
            if (m.config.in_features, m.config.n_leads, m.config.stride) != (first.in_features, first.n_leads, first.stride):
                raise ValueError("ensemble members differ in input features, output leads or stride")
        self.members = nn.ModuleList(members)
        self.config = first  # what callers need of it (features, leads, stride) is shared by all

    def flops(self, length: int) -> float:
        """Sum of the members' FLOPs over a window of ``length`` samples."""
        return float(sum(member.flops(length) for member in self.members))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, F, L) -> (mean (N, leads, L) mV, log-variance (N, leads, L) of the mixture)."""
        outputs = [member(x) for member in self.members]
        means = torch.stack([mean for mean, _ in outputs])
        # M x N x leads x L
        variance = means.var(dim=0, unbiased=False)
        if all(log_var is not None for _, log_var in outputs):
            variance = variance + torch.stack([log_var.exp() for _, log_var in outputs]).mean(dim=0)
        return means.mean(dim=0), variance.clamp_min(1e-12).log().clamp(*LOG_VAR_RANGE)
