"""ecg-dicom: reconstruct a 12-lead ECG (µV) from one lead, and speak DICOM about it."""

import os
from importlib import import_module

__version__ = "0.1.0"

# Thread policy, set before numpy or torch is loaded (a caller's own setting wins): their
# thread pools spin-wait for their slowest thread, which beside other busy processes makes
# a job many times slower than one thread (OpenBLAS: a (256, 64) x (64, 64) product went
# from 10 ms to 800 ms on this shared 2-core machine). numpy's products here are small: one
# thread. torch's OpenMP threads sleep instead of spinning. ONNX Runtime's pool, the
# default model runtime, is set per session (ecg_dicom.core.runners).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# public name -> module that defines it; imported on first use so that the CLI's --help
# and `ecg-dicom status` do not pay for importing torch
_PUBLIC = {
    "Attention": "ecg_dicom.core.model",
    "BiLSTMAttentionModel": "ecg_dicom.core.model",
    "ModelConfig": "ecg_dicom.core.model",
    "min_max_scale": "ecg_dicom.core.preprocess",
    "resample_signal": "ecg_dicom.core.preprocess",
    "process_and_save_npy_files": "ecg_dicom.convert.batch",
    "Reconstructor": "ecg_dicom.core.inference",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ecg_dicom' has no attribute {name!r}")
