"""ecg-dicom: reconstruct a 12-lead ECG (µV) from one lead, and speak DICOM about it."""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use so that the CLI's --help
# and `ecg-dicom status` do not pay for importing torch
_PUBLIC = {
    "Attention": "ecg_dicom.core.model",
    "BiLSTMAttentionModel": "ecg_dicom.core.model",
    "ModelConfig": "ecg_dicom.core.model",
    "min_max_scale": "ecg_dicom.core.preprocess",
    "resample_signal": "ecg_dicom.core.preprocess",
    "process_and_save_npy_files": "ecg_dicom.convert",
    "Reconstructor": "ecg_dicom.core.inference",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ecg_dicom' has no attribute {name!r}")
