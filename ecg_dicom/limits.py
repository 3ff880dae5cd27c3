"""Input limits: how big an input may be before anything decodes it, and how deep the queue.

One frozen, validated dataclass, the ``limits:`` section of the site configuration, used by
both doors (the C-STORE listener answers a DICOM failure status, the worker writes a reason
file) and by ``convert``. Checks here never decode more than they must: a ``.npy`` is judged
by its header, a deflated DICOM data set by inflating it in bounded steps into nothing.
"""

from __future__ import annotations

import zlib
from typing import Annotated

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass

from ecg_dicom.errors import InputError

MIB = 1 << 20
_INFLATE_STEP = 1 << 20


@dataclass(config=ConfigDict(extra="forbid", frozen=True))
class Limits:
    """``limits:``: inputs larger than these are refused with a reason (a DICOM failure
    status on the wire, a reason file for a dropped file).

    ``max_input_bytes``: an input's encoded size (a C-STORE data set as received, a dropped
    file); ``max_inflated_bytes``: a deflated data set once inflated;
    ``max_samples_per_channel`` / ``max_channels``: a waveform's declared size (default 1 h at
    1 kHz; 32 channels in one multiplex group); ``queue_high_water``: inputs waiting or being
    processed at which the listener answers Out of Resources (0xA700, senders retry later)
    and the watched folder waits.
    """

    max_input_bytes: Annotated[StrictInt, Field(ge=1024)] = 64 * MIB
    max_inflated_bytes: Annotated[StrictInt, Field(ge=1024)] = 64 * MIB
    max_samples_per_channel: Annotated[StrictInt, Field(ge=1)] = 3_600_000
    max_channels: Annotated[StrictInt, Field(ge=1)] = 32
    queue_high_water: Annotated[StrictInt, Field(ge=1)] = 200


DEFAULT_LIMITS = Limits()


def check_input_bytes(size: int, limits: Limits) -> None:
    """Refuse an input of ``size`` encoded bytes above ``limits.max_input_bytes``."""
    if size > limits.max_input_bytes:
        raise InputError(f"too large: {size} bytes, at most {limits.max_input_bytes} bytes per input "
                         "(limits.max_input_bytes)")


def check_inflated_size(deflated: bytes | memoryview, limits: Limits) -> int:
    """Inflate a raw-deflate stream (Deflated Explicit VR Little Endian) into nothing, in
    bounded steps; returns the inflated size. Raises InputError when it is corrupt or
    inflates beyond ``limits.max_inflated_bytes``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    data = bytes(deflated)
    try:
        while data and not inflater.eof:  # after the end of the stream the rest is trailing bytes
            produced = len(inflater.decompress(data, _INFLATE_STEP))
            total += produced
            if total > limits.max_inflated_bytes:
                raise InputError(f"deflated data set inflates to more than {limits.max_inflated_bytes} bytes "
                                 "(limits.max_inflated_bytes)")
            if not produced and len(inflater.unconsumed_tail) >= len(data):
                break  # no progress: let the parser say what is wrong with it
            data = inflater.unconsumed_tail
        if not inflater.eof:
            total += len(inflater.flush())
    except zlib.error as exc:
        raise InputError(f"corrupt deflated data set ({exc})") from None
    if total > limits.max_inflated_bytes:
        raise InputError(f"deflated data set inflates to more than {limits.max_inflated_bytes} bytes "
                         "(limits.max_inflated_bytes)")
    return total


def check_waveform_size(channels: int, samples: int, limits: Limits, group: int) -> None:
    """Refuse a multiplex group declaring more channels or samples than the limits."""
    if channels > limits.max_channels:
        raise InputError(f"multiplex group {group} declares {channels} channels, at most {limits.max_channels} "
                         "(limits.max_channels)")
    if samples > limits.max_samples_per_channel:
        raise InputError(f"multiplex group {group} declares {samples} samples per channel, at most "
                         f"{limits.max_samples_per_channel} (limits.max_samples_per_channel)")
