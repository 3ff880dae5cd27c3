"""One self-describing checkpoint file: weights, model config, preprocessing, provenance.

Saved with ``torch.save`` and read with ``torch.load(weights_only=True)``: only tensors
and plain containers, never arbitrary pickled objects. torch is imported when a
checkpoint is read or written, not with this module (the header dataclasses serve the
torch-free ONNX path too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecg_dicom.errors import CheckpointError
from ecg_dicom.extras import require
from ecg_dicom.leads import learned_leads

if TYPE_CHECKING:
    from ecg_dicom.core.model import BiLSTMAttentionModel, EnsembleModel

CHECKPOINT_FORMAT = "ecg-dicom-checkpoint"
# 1: one model (model_config + state_dict); 2: also ensembles (members: [{model_config, state_dict}])
CHECKPOINT_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
REQUIRED_KEYS = ("format", "format_version", "model_version", "input_lead", "output_leads",
                 "preprocessing", "training")


def shipped_checkpoint_path(input_lead: str) -> Path:
    """Path of the checkpoint shipped inside the package for ``input_lead`` ("I" or "II")."""
    return WEIGHTS_DIR / f"lead_{input_lead}.pt"


@dataclass(frozen=True)
class Preprocessing:
    """How a lead becomes model input: resample to ``fs`` Hz, high-pass at ``highpass_hz``
    (0: none, as the first shipped models), windows of ``window`` samples overlapping by
    ``window - hop``, min-max + mV features (see ``model_features``)."""

    fs: float = 250.0
    window: int = 1250
    hop: int = 625
    scaling: str = "minmax+mV"
    highpass_hz: float = 0.0

    def to_dict(self) -> dict:
        return {"fs": self.fs, "window": self.window, "hop": self.hop, "scaling": self.scaling,
                "highpass_hz": self.highpass_hz}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode plus everything that describes it
    (``model`` is None for the header of an ONNX export, see :mod:`ecg_dicom.core.runners`)."""

    model: BiLSTMAttentionModel | EnsembleModel | None
    input_lead: str
    output_leads: tuple[str, ...]
    model_version: str
    preprocessing: Preprocessing
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    model: BiLSTMAttentionModel | EnsembleModel,
    input_lead: str,
    model_version: str,
    preprocessing: Preprocessing,
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (tmp file + rename); weights are stored as float32.

    An :class:`EnsembleModel` is stored as its members' configs and weights.
    """
    torch = require("torch", "writing a checkpoint")

    from ecg_dicom.core.model import BiLSTMAttentionModel

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_version": model_version,
        "input_lead": input_lead,
        "output_leads": list(learned_leads(input_lead)),
        "preprocessing": preprocessing.to_dict(),
        "training": training,
        "metrics": metrics or {},
        **(_weights(model) if isinstance(model, BiLSTMAttentionModel)
           else {"members": [_weights(member) for member in model.members]}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path | None = None, input_lead: str = "I",
                    device: str = "cpu") -> Checkpoint:
    """Load and check a checkpoint; ``path=None`` takes the shipped one for ``input_lead``.

    Raises :class:`CheckpointError` naming what does not match: not a checkpoint of ours,
    another format version, another input lead, missing keys, or weights that do not fit
    the stored model config.
    """
    path = Path(path) if path is not None else shipped_checkpoint_path(input_lead)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    torch = require("torch", f"reading the checkpoint {path.name} itself (--precision fp32, or no"
                             f" {path.stem}.onnx export beside it)")

    from ecg_dicom.core.model import EnsembleModel

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ecg-dicom checkpoint (no format '{CHECKPOINT_FORMAT}')")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if payload["format_version"] not in READABLE_FORMAT_VERSIONS:
        raise CheckpointError(f"{path} has format version {payload['format_version']}, this code reads"
                              f" {', '.join(map(str, READABLE_FORMAT_VERSIONS))}")
    if payload["input_lead"] != input_lead:
        raise CheckpointError(f"{path} is a model for input lead {payload['input_lead']}, not {input_lead}")
    if tuple(payload["output_leads"]) != learned_leads(input_lead):
        raise CheckpointError(f"{path} predicts {payload['output_leads']}, expected {list(learned_leads(input_lead))}")
    parts = payload["members"] if "members" in payload else [payload]
    try:
        members = [_build_member(part, path) for part in parts]
        model = members[0] if "members" not in payload else EnsembleModel(members)
        preprocessing = Preprocessing(**payload["preprocessing"])
    except (TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights do not match its model config: {exc}") from exc
    if model.config.n_leads != len(payload["output_leads"]):
        raise CheckpointError(f"{path}: model predicts {model.config.n_leads} leads,"
                              f" header says {len(payload['output_leads'])}")
    model.to(device).eval()
    return Checkpoint(
        model=model,
        input_lead=input_lead,
        output_leads=tuple(payload["output_leads"]),
        model_version=str(payload["model_version"]),
        preprocessing=preprocessing,
        training=dict(payload["training"]),
        metrics=dict(payload.get("metrics") or {}),
    )


def _weights(model: BiLSTMAttentionModel) -> dict[str, Any]:
    """One model's config and float32 weights, as stored in a checkpoint."""
    return {"model_config": model.config.to_dict(),
            "state_dict": {k: v.detach().cpu().float().clone() for k, v in model.state_dict().items()}}


def _build_member(part: Any, path: Path) -> BiLSTMAttentionModel:
    """Rebuild one model from its stored config and weights (see :func:`_weights`)."""
    from ecg_dicom.core.model import BiLSTMAttentionModel, ModelConfig

    if not isinstance(part, dict) or "model_config" not in part or "state_dict" not in part:
        raise CheckpointError(f"{path} lacks model_config or state_dict")
    model = BiLSTMAttentionModel(ModelConfig(**part["model_config"]))
    model.load_state_dict(part["state_dict"])
    return model
