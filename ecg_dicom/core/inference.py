"""Reconstructor: one lead (or I and II together) in µV at any rate and length -> 12 leads
in µV, batched.

Loads the model once; cuts each record into overlapping model windows, runs them in
batches (:mod:`ecg_dicom.core.runners`: ONNX Runtime on the exported graph by default,
exact fp32 torch on request), stitches the windows with overlap weights (no seams), brings
the prediction back to the input's rate and length, copies the input lead through
unchanged (both of them for the two-lead model) and computes the four limb leads exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ecg_dicom.core.checkpoint import Checkpoint, load_checkpoint, shipped_checkpoint_path
from ecg_dicom.core.preprocess import highpass, lead_features, resample_fs
from ecg_dicom.core.runners import PRECISIONS, ModelRunner, OnnxRunner, TorchRunner, onnx_path_for
from ecg_dicom.core.uncertainty import RecordUncertainty, UncertaintyCalibration, assess
from ecg_dicom.errors import CheckpointError
from ecg_dicom.files import file_sha256
from ecg_dicom.leads import LEADS_12, TWO_LEAD_INPUT, assemble_12_leads, input_leads_of, learned_leads

LOG = logging.getLogger(__name__)
# forward passes per chunk when reconstruct_batch runs a ReconstructionTask (bounds memory)
CHUNK_BATCHES = 8


@dataclass
class Reconstruction:
    """One reconstructed record.

    leads: (12, N) float32 µV in :data:`LEADS_12` order, at the input's rate and length.
    sigma: (n_learned,) float64 (7, or 6 for the two-lead model), per learned lead the
    model's own RMS uncertainty estimate in µV (None when the checkpoint has no variance head).
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
    """Reconstruct 12 leads from one, with a model loaded once.

    Parameters
    ----------
    checkpoint : Checkpoint
        From :func:`ecg_dicom.core.checkpoint.load_checkpoint` (or the header of an ONNX
        export, whose ``model`` is None, together with its ``runner``).
    device : str
        Torch device, ``"cpu"`` by default (torch runner only).
    batch_size : int
        Windows per forward pass.
    runner : ModelRunner, optional
        What runs the network; default: the checkpoint's torch model in fp32.
    """

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu", batch_size: int = 32,
                 runner: ModelRunner | None = None, threads: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.batch_size = int(batch_size)
        self.model = checkpoint.model
        self.runner = runner or TorchRunner(checkpoint.model, device, batch_size, threads,
                                            checkpoint.preprocessing.window)
        # σ -> per-lead and record uncertainty; from_checkpoint loads the one shipped beside the weights
        self.calibration = UncertaintyCalibration()

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, input_lead: str = "I",
                        device: str = "cpu", batch_size: int = 32, precision: str = "fast",
                        threads: int | None = None) -> "Reconstructor":
        """Load ``path`` (or the shipped checkpoint for ``input_lead``) and wrap it.

        ``precision="fast"`` (the default, as for every command): run the ONNX export beside the checkpoint (``x.onnx`` beside
        ``x.pt``, see ``ecg-dicom export``) when there is one made from exactly these weights,
        without importing torch; else log why and run the checkpoint in fp32.
        ``precision="fp32"``: the checkpoint's torch model (the reference). ``threads``:
        the runtime's threads (default: :func:`ecg_dicom.core.runners.default_threads`
        for ONNX Runtime, torch's own setting for torch).
        """
        rec = cls._load(path, input_lead, device, batch_size, precision, threads)
        weights = Path(path) if path is not None else shipped_checkpoint_path(input_lead)
        rec.calibration = UncertaintyCalibration.for_weights(weights, rec.model_version)
        return rec

    @classmethod
    def _load(cls, path: str | Path | None, input_lead: str, device: str, batch_size: int, precision: str,
              threads: int | None) -> "Reconstructor":
        """:meth:`from_checkpoint` without the uncertainty calibration."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "fast" and device == "cpu":
            runner, why = cls._fast_runner(Path(path) if path is not None else shipped_checkpoint_path(input_lead),
                                           batch_size, threads)
            if runner is not None:
                if runner.header.input_lead != input_lead:
                    raise CheckpointError(f"{runner.path} is a model for input lead {runner.header.input_lead},"
                                          f" not {input_lead}")
                return cls(runner.header.checkpoint(), device, batch_size, runner=runner)
            LOG.warning("%s; running the checkpoint in exact fp32 (slower)", why)
        return cls(load_checkpoint(path, input_lead=input_lead, device=device), device, batch_size, threads=threads)

    @staticmethod
    def _fast_runner(checkpoint_path: Path, batch_size: int,
                     threads: int | None) -> tuple[OnnxRunner | None, str]:
        """An :class:`OnnxRunner` on the export of ``checkpoint_path`` if there is one made
        from these very weights (the sha256 it records), else (None, why not)."""
        exported = onnx_path_for(checkpoint_path)
        if not checkpoint_path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint_path} does not exist")
        if not exported.is_file():
            return None, f"no {exported.name} beside {checkpoint_path.name} (`ecg-dicom export` makes it)"
        runner = OnnxRunner(exported, threads=threads, batch_size=max(batch_size, 64))
        if runner.header.source_sha256 != file_sha256(checkpoint_path):
            return None, (f"{exported.name} was exported from other weights than {checkpoint_path.name}"
                          " (run `ecg-dicom export` again)")
        return runner, ""

    def uncertainty(self, recon: Reconstruction) -> RecordUncertainty | None:
        """Per learned lead the expected 1 − r, and their mean for the record (see
        :mod:`ecg_dicom.core.uncertainty`); None when the model has no variance head."""
        if recon.sigma is None:
            return None
        learned = learned_leads(self.input_lead)
        return assess(recon.sigma, recon.leads[[LEADS_12.index(lead) for lead in learned]], learned,
                      self.calibration)

    def single_threaded_copy(self) -> "Reconstructor | None":
        """The same model with a runtime of its own on one thread, for a worker process
        forked from this one (a runtime's thread pool does not survive a fork); None when the
        model runs in torch (its OpenMP threads make forking unsafe)."""
        if not isinstance(self.runner, OnnxRunner):
            return None
        runner = OnnxRunner(self.runner.path, threads=1, batch_size=self.runner.batch_size)
        copy = Reconstructor(self.checkpoint, self.device, self.batch_size, runner=runner)
        copy.calibration = self.calibration
        return copy

    @property
    def precision(self) -> str:
        """What runs the network, in words (``"torch fp32"``, ``"onnxruntime int8"``...)."""
        return self.runner.name

    @property
    def input_lead(self) -> str:
        return self.checkpoint.input_lead

    @property
    def input_leads(self) -> tuple[str, ...]:
        """The measured lead(s) the model takes: ("I",), ("II",) or ("I", "II")."""
        return input_leads_of(self.input_lead)

    @property
    def model_version(self) -> str:
        return self.checkpoint.model_version

    def count_windows(self, n_samples: int, fs: float) -> int:
        """How many model windows :meth:`reconstruct_batch` cuts a record of ``n_samples`` at ``fs`` Hz into."""
        pre = self.checkpoint.preprocessing
        return len(window_starts(int(round(n_samples * pre.fs / fs)), pre.window, pre.hop))

    def reconstruct(self, lead_uv: np.ndarray, fs: float) -> np.ndarray:
        """(N,) µV at ``fs`` Hz ((2, N): I and II for the two-lead model) -> (12, N) float32 µV."""
        return self.reconstruct_batch([lead_uv], [fs])[0].leads

    def start(self, leads_uv: Sequence[np.ndarray], fs: Sequence[float]) -> "ReconstructionTask":
        """A :class:`ReconstructionTask` for these records: run it a chunk at a time with
        :meth:`ReconstructionTask.step` (bounded memory, a stop or other work between chunks)."""
        return ReconstructionTask(self, leads_uv, fs)

    def reconstruct_batch(self, leads_uv: Sequence[np.ndarray], fs: Sequence[float],
                          progress: Callable[[int, int], None] | None = None) -> list[Reconstruction]:
        """Reconstruct several records in shared forward passes.

        leads_uv: each (N_i,) µV (already checked, see ``check_single_lead``), or (2, N_i) µV
        (I, II) for the two-lead model; fs: Hz each.
        The windows are predicted :data:`CHUNK_BATCHES` forward passes at a time, so memory
        stays bounded whatever the records' lengths; ``progress(done, total)`` (model
        windows) is called after each chunk.
        """
        task = self.start(leads_uv, fs)
        while not task.finished:
            task.step(CHUNK_BATCHES * self.batch_size)
            if progress is not None:
                progress(task.done, task.total)
        return task.results()

    def reconstruct_isolated(self, leads_uv: Sequence[np.ndarray], fs: Sequence[float],
                             progress: Callable[[int, int], None] | None = None
                             ) -> list[Reconstruction | Exception]:
        """:meth:`reconstruct_batch`, but a record that makes it fail fails alone.

        Tries the whole batch in one call; if that raises, each record on its own, and
        returns the exception in the place of the record it came from.
        """
        try:
            return list(self.reconstruct_batch(leads_uv, fs, progress))
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
        return self.count_windows(int(round(seconds * pre.fs)), pre.fs) * self.runner.flops_per_window

    def _predict(self, windows_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(W, L) µV windows ((W, 2, L) for two input leads) -> (W, leads, L) mV means and
        log-variances (or None)."""
        return self.runner.predict(lead_features(windows_uv, len(self.input_leads)))

    def _assemble(self, lead_in: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Input lead (N,) and predicted (7, N) µV -> (12, N) float32, input copied exactly;
        for the two-lead model input (2, N) (I, II) and predicted V1–V6 (6, N), both copied."""
        if self.input_lead == TWO_LEAD_INPUT:
            return assemble_12_leads(lead_in[0], lead_in[1], predicted)
        if self.input_lead == "I":
            lead_i, lead_ii = lead_in, predicted[0]
        else:
            lead_i, lead_ii = predicted[0], lead_in
        out = assemble_12_leads(lead_i, lead_ii, predicted[1:])
        out[LEADS_12.index(self.input_lead)] = lead_in.astype(np.float32)
        return out


class ReconstructionTask:
    """The model windows of one or more records, predicted a chunk at a time.

    :meth:`Reconstructor.reconstruct_batch` runs one to the end. A caller that must stay
    responsive (the service's worker between jobs, a progress bar) calls :meth:`step`
    itself: only one chunk of windows is in memory at a time, beside each record's
    accumulators ((leads, N) float64 at the model's rate), and stopping between chunks
    loses nothing but the work done. Results are the same as in one pass: the windows go
    through the model in the same forward batches, in the same order.
    """

    def __init__(self, reconstructor: Reconstructor, leads_uv: Sequence[np.ndarray], fs: Sequence[float]) -> None:
        pre = reconstructor.checkpoint.preprocessing
        self.reconstructor = reconstructor
        self._window = pre.window
        n_in = len(reconstructor.input_leads)
        self._leads = [np.asarray(x, np.float64) for x in leads_uv]
        for x in self._leads:
            if (x.ndim, x.shape[0] if x.ndim == 2 else 1) != ((1, 1) if n_in == 1 else (2, n_in)):
                raise ValueError(f"a {reconstructor.input_lead} model takes {'(N,)' if n_in == 1 else f'({n_in}, N)'}"
                                 f" µV, got shape {x.shape}")
        self._fs = [float(f) for f in fs]
        self._resampled = [resample_fs(x, f, pre.fs) for x, f in zip(self._leads, self._fs)]
        if pre.highpass_hz:
            self._resampled = [highpass(x, pre.fs, pre.highpass_hz) for x in self._resampled]
        self._padded = [np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, max(0, self._window - x.shape[-1]))], mode="edge")
                        for x in self._resampled]
        self._order = [(rec, start) for rec, x in enumerate(self._resampled)
                       for start in window_starts(x.shape[-1], pre.window, pre.hop)]
        self._weights = overlap_weights(pre.window)
        self._acc: list[np.ndarray | None] = [None] * len(self._leads)
        self._var: list[np.ndarray | None] = [None] * len(self._leads)
        self._norm = [np.zeros(max(x.shape[-1], pre.window)) for x in self._resampled]
        self.total = len(self._order)
        self.done = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def step(self, max_windows: int) -> int:
        """Predict the next ``max_windows`` windows (best a multiple of the batch size);
        returns how many were done."""
        chunk = self._order[self.done:self.done + max_windows]
        if not chunk:
            return 0
        window = self._window
        means, log_vars = self.reconstructor._predict(
            np.stack([self._padded[rec][..., start:start + window] for rec, start in chunk]))
        for k, (rec, start) in enumerate(chunk):
            if self._acc[rec] is None:
                self._acc[rec] = np.zeros((means.shape[1], self._norm[rec].size))
                self._var[rec] = np.zeros_like(self._acc[rec]) if log_vars is not None else None
            self._acc[rec][:, start:start + window] += means[k] * self._weights
            if log_vars is not None:
                self._var[rec][:, start:start + window] += np.exp(log_vars[k]) * self._weights
            self._norm[rec][start:start + window] += self._weights
        self.done += len(chunk)
        return len(chunk)

    def results(self) -> list[Reconstruction]:
        """One :class:`Reconstruction` per record, in order (after the last :meth:`step`)."""
        if not self.finished:
            raise RuntimeError(f"{self.total - self.done} of {self.total} windows not predicted yet")
        pre = self.reconstructor.checkpoint.preprocessing
        results = []
        for rec, x in enumerate(self._resampled):
            acc, var, norm = self._acc[rec], self._var[rec], self._norm[rec]
            n = x.shape[-1]
            pred_uv = resample_fs((acc / norm)[:, :n], pre.fs, self._fs[rec], length=self._leads[rec].shape[-1])
            pred_uv *= 1000.0
            results.append(Reconstruction(
                leads=self.reconstructor._assemble(self._leads[rec], pred_uv),
                sigma=None if var is None else np.sqrt((var / norm)[:, :n].mean(axis=1)) * 1000.0,
            ))
            self._acc[rec] = self._var[rec] = None   # done with: free them before the next record's
        return results
