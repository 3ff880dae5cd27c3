"""ecg-dicom: reconstruct a 12-lead ECG (µV) from one lead, and speak DICOM about it."""

from ecg_dicom.core.model import Attention, BiLSTMAttentionModel, ModelConfig
from ecg_dicom.core.preprocess import min_max_scale, resample_signal

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Attention",
    "BiLSTMAttentionModel",
    "ModelConfig",
    "min_max_scale",
    "resample_signal",
    "process_and_save_npy_files",
    "Reconstructor",
]


def __getattr__(name: str):
    # Lazy so that `import ecg_dicom` stays light for the CLI's --help.
    if name == "process_and_save_npy_files":
        from ecg_dicom.convert import process_and_save_npy_files
        return process_and_save_npy_files
    if name == "Reconstructor":
        from ecg_dicom.core.inference import Reconstructor
        return Reconstructor
    raise AttributeError(name)
