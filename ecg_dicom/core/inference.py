"""Reconstructor: one lead in µV at any rate and length -> 12 leads in µV, batched.

Loads the checkpoint once; cuts each record into overlapping model windows, runs them in
batches under ``torch.inference_mode``, stitches the windows with overlap weights (no
seams), brings the prediction back to the input's rate and length, copies the input lead
through unchanged and computes the four limb leads exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ecg_dicom.core.checkpoint import Checkpoint, load_checkpoint
from ecg_dicom.core.preprocess import highpass, model_features, resample_fs
from ecg_dicom.leads import LEADS_12, assemble_12_leads


@dataclass
class Reconstruction:
    """One reconstructed record.

    leads: (12, N) float32 µV in :data:`LEADS_12` order, at the input's rate and length.
    sigma: (7,) float64, per learned lead the model's own RMS uncertainty estimate in µV
    (None when the checkpoint has no variance head).
    """

    leads: np.ndarray
    sigma: np.ndarray | None


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Start indices of windows covering ``length`` samples; the last one ends at the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def overlap_weights(window: int) -> np.ndarray:
    """(window,) triangular weights, never zero, so overlapping windows cross-fade."""
    ramp = np.minimum(np.arange(1, window + 1), np.arange(window, 0, -1)).astype(np.float64)
    return ramp / ramp.max()


class Reconstructor:
    """Reconstruct 12 leads from one, with a checkpoint loaded once.

    Parameters
    ----------
    checkpoint : Checkpoint
        From :func:`ecg_dicom.core.checkpoint.load_checkpoint`.
    device : str
        Torch device, ``"cpu"`` by default.
    batch_size : int
        Windows per forward pass.
    """

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu", batch_size: int = 32) -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.model = checkpoint.model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, input_lead: str = "I",
                        device: str = "cpu", batch_size: int = 32) -> "Reconstructor":
        """Load ``path`` (or the shipped checkpoint for ``input_lead``) and wrap it."""
        return cls(load_checkpoint(path, input_lead=input_lead, device=device), device, batch_size)

    @property
    def input_lead(self) -> str:
        return self.checkpoint.input_lead

    @property
    def model_version(self) -> str:
        return self.checkpoint.model_version

    def count_windows(self, n_samples: int, fs: float) -> int:
        """How many model windows :meth:`reconstruct_batch` cuts a record of ``n_samples`` at ``fs`` Hz into."""
        pre = self.checkpoint.preprocessing
        return len(window_starts(int(round(n_samples * pre.fs / fs)), pre.window, pre.hop))

    def reconstruct(self, lead_uv: np.ndarray, fs: float) -> np.ndarray:
        """(N,) µV at ``fs`` Hz -> (12, N) float32 µV."""
        return self.reconstruct_batch([lead_uv], [fs])[0].leads

    def reconstruct_batch(self, leads_uv: Sequence[np.ndarray], fs: Sequence[float]) -> list[Reconstruction]:
        """Reconstruct several records in shared forward passes.

        leads_uv: each (N_i,) µV (already checked, see ``check_single_lead``); fs: Hz each.
        """
        pre = self.checkpoint.preprocessing
        window, hop = pre.window, pre.hop
        resampled = [resample_fs(np.asarray(x, np.float64), f, pre.fs) for x, f in zip(leads_uv, fs)]
        if pre.highpass_hz:
            resampled = [highpass(x, pre.fs, pre.highpass_hz) for x in resampled]
        windows, owners = [], []
        for rec, x in enumerate(resampled):
            padded = np.pad(x, (0, max(0, window - x.size)), mode="edge")
            for start in window_starts(x.size, window, hop):
                windows.append(padded[start:start + window])
                owners.append((rec, start))
        means, log_vars = self._predict(np.stack(windows))
        weights = overlap_weights(window)
        results = []
        for rec, x in enumerate(resampled):
            n_model = max(x.size, window)
            acc = np.zeros((means.shape[1], n_model))
            var_acc = np.zeros_like(acc)
            norm = np.zeros(n_model)
            for k, (owner, start) in enumerate(owners):
                if owner != rec:
                    continue
                acc[:, start:start + window] += means[k] * weights
                if log_vars is not None:
                    var_acc[:, start:start + window] += np.exp(log_vars[k]) * weights
                norm[start:start + window] += weights
            pred_mv = (acc / norm)[:, :x.size]
            n_out = np.asarray(leads_uv[rec]).size
            pred_uv = resample_fs(pred_mv, pre.fs, fs[rec], length=n_out) * 1000.0
            results.append(Reconstruction(
                leads=self._assemble(np.asarray(leads_uv[rec], np.float64), pred_uv),
                sigma=None if log_vars is None
                else np.sqrt((var_acc / norm)[:, :x.size].mean(axis=1)) * 1000.0,
            ))
        return results

    def reconstruct_isolated(self, leads_uv: Sequence[np.ndarray],
                             fs: Sequence[float]) -> list[Reconstruction | Exception]:
        """:meth:`reconstruct_batch`, but a record that makes it fail fails alone.

        Tries the whole batch in one call; if that raises, each record on its own, and
        returns the exception in the place of the record it came from.
        """
        try:
            return list(self.reconstruct_batch(leads_uv, fs))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, per record
            if len(leads_uv) == 1:
                return [exc]
        results: list[Reconstruction | Exception] = []
        for lead, f in zip(leads_uv, fs):
            try:
                results.append(self.reconstruct_batch([lead], [f])[0])
            except Exception as exc:  # noqa: BLE001 - handed back to the caller, per record
                results.append(exc)
        return results

    def flops_per_record(self, seconds: float = 10.0) -> float:
        """Model FLOPs to reconstruct one record of ``seconds`` (any input rate): the number
        of windows :meth:`reconstruct_batch` cuts it into times the FLOPs of one window."""
        pre = self.checkpoint.preprocessing
        return self.count_windows(int(round(seconds * pre.fs)), pre.fs) * float(self.model.flops(pre.window))

    def _predict(self, windows_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(W, L) µV windows -> (W, leads, L) mV means and log-variances (or None)."""
        feats = model_features(windows_uv)
        means, log_vars = [], []
        with torch.inference_mode():
            for i in range(0, len(feats), self.batch_size):
                batch = torch.from_numpy(feats[i:i + self.batch_size]).to(self.device)
                mean, log_var = self.model(batch)
                means.append(mean.float().cpu().numpy())
                if log_var is not None:
                    log_vars.append(log_var.float().cpu().numpy())
        return np.concatenate(means), (np.concatenate(log_vars) if log_vars else None)

    def _assemble(self, lead_in: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Input lead (N,) and predicted (7, N) µV -> (12, N) float32, input copied exactly."""
        if self.input_lead == "I":
            lead_i, lead_ii = lead_in, predicted[0]
        else:
            lead_i, lead_ii = predicted[0], lead_in
        out = assemble_12_leads(lead_i, lead_ii, predicted[1:])
        out[LEADS_12.index(self.input_lead)] = lead_in.astype(np.float32)
        return out
