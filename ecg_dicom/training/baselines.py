"""Patient-generic linear baselines: each learned lead as a least-squares filter of the
input lead(s), zero-lag (one gain per input lead) or with ±40 ms of lags (an FIR filter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ecg_dicom.core.accuracy import PROTOCOL_FS, protocol_window
from ecg_dicom.core.preprocess import highpass, resample_fs
from ecg_dicom.leads import LEADS_12, input_leads_of, learned_leads

BASELINE_FS = PROTOCOL_FS
LAG_S = 0.040
BASELINE_KINDS = ("linear_zero_lag", "linear_lagged")


@dataclass(frozen=True)
class LinearBaseline:
    """y_lead(t) = sum_k coef[lead, k] * x(t + lags[k]) + intercept[lead], at ``fs`` Hz, µV.

    coef: (n_out, n_inputs * n_lags), input lead after input lead; lags: (n_lags,) sample
    offsets (0 only, or -L..L); x is (N,) for one input lead, (2, N) for I+II.
    """

    kind: str
    input_lead: str
    output_leads: tuple[str, ...]
    fs: float
    lags: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def predict(self, x_uv: np.ndarray, fs: float) -> np.ndarray:
        """(N,) or (2, N) µV at ``fs`` -> (n_out, N) µV at ``fs`` (resampled to the fit rate and back)."""
        x = resample_fs(x_uv, fs, self.fs)
        y = self.coef @ lag_matrix(x, self.lags) + self.intercept[:, None]
        return resample_fs(y, self.fs, fs, length=np.asarray(x_uv).shape[-1])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "input_lead": self.input_lead, "output_leads": list(self.output_leads),
                "fs": self.fs, "lags": self.lags.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LinearBaseline":
        return cls(d["kind"], d["input_lead"], tuple(d["output_leads"]), float(d["fs"]),
                   np.asarray(d["lags"], dtype=int), np.asarray(d["coef"], dtype=np.float64),
                   np.asarray(d["intercept"], dtype=np.float64))


def lag_matrix(x: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """(N,) -> (n_lags, N): row k is x shifted by lags[k] samples (x(t + lag)), zero-padded;
    (K, N) -> (K * n_lags, N), input row after input row."""
    if np.ndim(x) == 2:
        return np.vstack([lag_matrix(row, lags) for row in x])
    n = x.size
    out = np.zeros((len(lags), n))
    for k, lag in enumerate(lags):
        if lag >= 0:
            out[k, :n - lag] = x[lag:]
        else:
            out[k, -lag:] = x[:n + lag]
    return out


def fit_linear_baselines(pairs: Iterable[tuple[np.ndarray, np.ndarray]], input_lead: str,
                         kinds: Sequence[str] = BASELINE_KINDS, fs: float = BASELINE_FS) -> dict[str, LinearBaseline]:
    """Least squares over all records at once, for each of ``kinds``, in one pass.

    The pooled normal equations are a running sum, so ``pairs`` is consumed once and may be a
    generator (memory does not grow with the record count); the zero-lag system is the lag-0
    and intercept block of the lagged one, so both kinds share that pass.
    pairs: (input (N_i,) µV, targets (n_out, N_i) µV), all at ``fs`` Hz and already filtered
    as they will be used. kinds: "linear_zero_lag" and/or "linear_lagged" (±40 ms).
    """
    for kind in kinds:
        if kind not in BASELINE_KINDS:
            raise ValueError(f"unknown baseline kind {kind!r}")
    max_lag = int(round(LAG_S * fs)) if "linear_lagged" in kinds else 0
    lags = np.arange(-max_lag, max_lag + 1)
    n_in = len(input_leads_of(input_lead))
    n_feat = n_in * len(lags) + 1
    xtx = np.zeros((n_feat, n_feat))
    xty = None
    for x, y in pairs:
        design = np.vstack([lag_matrix(np.asarray(x, np.float64), lags), np.ones(np.asarray(x).shape[-1])])
        xtx += design @ design.T
        part = design @ np.asarray(y, np.float64).T
        xty = part if xty is None else xty + part
    if xty is None:
        raise ValueError("no records to fit the linear baseline on")
    fitted = {}
    for kind in kinds:
        keep = (np.arange(n_feat) if kind == "linear_lagged"
                else np.array([max_lag + j * len(lags) for j in range(n_in)] + [n_feat - 1]))
        solution = np.linalg.lstsq(xtx[np.ix_(keep, keep)], xty[keep], rcond=None)[0]
        # solution: (features kept, n_out); the last row is the intercept
        fitted[kind] = LinearBaseline(kind, input_lead, learned_leads(input_lead), fs,
                                      lags if kind == "linear_lagged" else np.array([0]),
                                      solution[:-1].T.copy(), solution[-1].copy())
    return fitted


def fit_baselines_on_records(records: Sequence, input_lead: str, seconds: float = 10.0) -> dict[str, LinearBaseline]:
    """Both baselines fitted on ``records`` (data.Record) by the evaluation protocol:
    the first ``seconds`` at 500 Hz, high-passed at 0.5 Hz."""
    idx_in = [LEADS_12.index(lead) for lead in input_leads_of(input_lead)]
    idx_in = idx_in[0] if len(idx_in) == 1 else idx_in
    idx_out = [LEADS_12.index(lead) for lead in learned_leads(input_lead)]

    def pairs():
        for rec in records:
            leads = highpass(protocol_window(rec.leads, rec.fs, seconds), BASELINE_FS)
            yield leads[idx_in], leads[idx_out]

    return fit_linear_baselines(pairs(), input_lead)


__all__ = ["BASELINE_FS", "BASELINE_KINDS", "LinearBaseline", "fit_baselines_on_records", "fit_linear_baselines",
           "lag_matrix", "protocol_window"]
