"""One exception hierarchy for the package.

Every error that reaches a user carries a one-line reason that says what is wrong with
the input, so the CLI and the service can write it to a reason file unchanged.
"""


class EcgDicomError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(EcgDicomError):
    """An input (array or DICOM file) that cannot be converted; the message is the reason."""


class WaveformError(InputError):
    """A DICOM object without a usable ECG waveform (wrong SOP class, no such lead, ...)."""


class SignalQualityError(InputError):
    """An input lead the signal-quality gate rejects (flat, lead off, drowned in noise)."""


class CheckpointError(EcgDicomError):
    """A checkpoint file that is missing, corrupt or does not match what was asked for."""


class ConfigError(EcgDicomError):
    """A configuration value that is invalid; the message names the key."""


class MissingExtraError(EcgDicomError):
    """An optional dependency that is not installed; the message names the pip extra that brings it."""
