"""Site configuration: one YAML file validated at start into one typed :class:`Settings`.

Every section is a frozen dataclass; the YAML keys are the field names. An unknown key, a
wrong type, a port out of range, a bad AE title or a folder that cannot be created raises
:class:`ConfigError` whose message starts with the dotted key (``listen.port: ...``), so
``ecg-dicom serve`` can print it and exit with status 2. Relative paths are relative to
the folder holding the config file.

    ae_title: ECGDICOM
    listen: {host: 127.0.0.1, port: 11112}
    allowed_callers: [CART1]        # absent = any caller (a warning is logged at start)
    input_lead: I
    folders: {watch: var/inbox, output: var/outbox, work: var/work}
    pacs: {ae_title: PACS, host: 127.0.0.1, port: 4242}   # absent = no delivery
"""

from __future__ import annotations

import logging
import os
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ecg_dicom.errors import ConfigError
from ecg_dicom.leads import SUPPORTED_INPUT_LEADS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
AE_TITLE_MAX = 16


@dataclass(frozen=True)
class Listen:
    """Where the C-STORE SCP listens; ``timeout_s`` is its ACSE/DIMSE/network timeout."""

    host: str = "127.0.0.1"
    port: int = 11112
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Folders:
    """``watch``: dropped inputs; ``output``: results (+ ``rejected/``, ``dead-letter/``);
    ``work``: the durable queue and the spool."""

    watch: Path
    output: Path
    work: Path

    @property
    def rejected(self) -> Path:
        return self.output / "rejected"

    @property
    def dead_letter(self) -> Path:
        return self.output / "dead-letter"

    @property
    def spool(self) -> Path:
        return self.work / "spool"

    @property
    def queue_db(self) -> Path:
        return self.work / "queue.sqlite3"


@dataclass(frozen=True)
class Pacs:
    """The PACS results are C-STOREd to, and how hard to try.

    A transient failure is retried after ``retry_initial_s * 2**(attempt-1)`` seconds (at
    most ``retry_max_s``, times a random jitter in [0.5, 1]); a job still undelivered
    ``give_up_after_s`` seconds after its results were written goes to the dead-letter folder.
    """

    ae_title: str
    host: str
    port: int
    timeout_s: float = 30.0
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    give_up_after_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Worker:
    """Batching: up to ``batch_size`` jobs per model call, waiting at most ``max_wait_s``
    for a batch to fill once the first job is there."""

    batch_size: int = 8
    max_wait_s: float = 0.02


@dataclass(frozen=True)
class Watcher:
    """A dropped file is taken once closed, or once its size has not changed for
    ``stable_s`` seconds; the folder is also rescanned every ``rescan_s`` seconds."""

    stable_s: float = 1.0
    rescan_s: float = 5.0


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration of one service instance."""

    ae_title: str
    folders: Folders
    listen: Listen = field(default_factory=Listen)
    allowed_callers: tuple[str, ...] | None = None
    input_lead: str = "I"
    pacs: Pacs | None = None
    checkpoint: Path | None = None
    device: str = "cpu"
    # intra-op threads of torch; 1 keeps latency steady on a shared machine (more threads than
    # idle cores makes each forward pass many times slower), raise it on a dedicated server
    torch_threads: int = 1
    worker: Worker = field(default_factory=Worker)
    watcher: Watcher = field(default_factory=Watcher)
    max_associations: int = 10
    log_level: str = "INFO"
    source: Path | None = field(default=None, metadata={"internal": True})  # the file read


def load_config(path: str | Path) -> Settings:
    """Read and validate ``path``; create the folders it names. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    settings = replace(_build(Settings, {} if raw is None else raw, "", path.resolve().parent),
                       source=path.resolve())
    _validate(settings)
    _create_folders(settings.folders)
    return settings


def load_config_or_report(path: str | Path, command: str) -> Settings | None:
    """:func:`load_config` for a CLI command: on a bad config print why on stderr, return None."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"ecg-dicom {command}: configuration error: {exc}", file=sys.stderr)
        return None


def log_effective(settings: Settings, logger: logging.Logger) -> None:
    """Log the effective settings, one line, and warn when any caller is let in."""
    logger.info("config %s: ae_title=%s listen=%s:%d input_lead=%s pacs=%s checkpoint=%s "
                "batch=%d watch=%s output=%s work=%s", settings.source, settings.ae_title,
                settings.listen.host, settings.listen.port, settings.input_lead,
                f"{settings.pacs.ae_title}@{settings.pacs.host}:{settings.pacs.port}" if settings.pacs else "none",
                settings.checkpoint or "shipped", settings.worker.batch_size, settings.folders.watch,
                settings.folders.output, settings.folders.work)
    if settings.allowed_callers is None:
        logger.warning("allowed_callers is not set: any calling AE title may store to %s",
                       settings.ae_title)


def _build(cls: type, raw: Any, prefix: str, base: Path) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``; keys are checked against its fields."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_kind(raw)}")
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key {_join(prefix, str(key))!r} (known keys here: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in known.items():
        key = _join(prefix, name)
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{key}: required key is missing")
            continue
        values[name] = _coerce(hints[name], raw[name], key, base)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str, base: Path) -> Any:
    """Check ``value`` against type ``tp`` (str, int, float, bool, Path, tuple[str, ...],
    a dataclass, or ``X | None``) and convert it."""
    if isinstance(tp, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(inner[0], value, key, base)
    if is_dataclass(tp):
        return _build(tp, value, key, base)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path (string), got {_kind(value)}")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p).resolve()
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_kind(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


def _validate(s: Settings) -> None:
    """Range and format checks that types alone cannot express."""
    _check_ae_title("ae_title", s.ae_title)
    _check_port("listen.port", s.listen.port)
    _check_host("listen.host", s.listen.host)
    _check_positive("listen.timeout_s", s.listen.timeout_s)
    if s.allowed_callers is not None:
        if not s.allowed_callers:
            raise ConfigError("allowed_callers: empty list would refuse every caller; "
                              "leave the key out to allow any caller")
        for i, aet in enumerate(s.allowed_callers):
            _check_ae_title(f"allowed_callers[{i}]", aet)
    if s.input_lead not in SUPPORTED_INPUT_LEADS:
        raise ConfigError(f"input_lead: {s.input_lead!r} is not one of {', '.join(SUPPORTED_INPUT_LEADS)}")
    if s.pacs is not None:
        _check_ae_title("pacs.ae_title", s.pacs.ae_title)
        _check_host("pacs.host", s.pacs.host)
        _check_port("pacs.port", s.pacs.port)
        for name in ("timeout_s", "retry_initial_s", "retry_max_s", "give_up_after_s"):
            _check_positive(f"pacs.{name}", getattr(s.pacs, name))
    if s.checkpoint is not None and not s.checkpoint.is_file():
        raise ConfigError(f"checkpoint: no such file {s.checkpoint}")
    if s.worker.batch_size < 1:
        raise ConfigError(f"worker.batch_size: must be at least 1, got {s.worker.batch_size}")
    if s.worker.max_wait_s < 0:
        raise ConfigError(f"worker.max_wait_s: must not be negative, got {s.worker.max_wait_s}")
    _check_positive("watcher.stable_s", s.watcher.stable_s)
    _check_positive("watcher.rescan_s", s.watcher.rescan_s)
    if s.torch_threads < 1:
        raise ConfigError(f"torch_threads: must be at least 1, got {s.torch_threads}")
    if s.max_associations < 1:
        raise ConfigError(f"max_associations: must be at least 1, got {s.max_associations}")
    if s.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {s.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    roles = {"folders.watch": s.folders.watch, "folders.output": s.folders.output, "folders.work": s.folders.work}
    if len(set(roles.values())) < len(roles):
        raise ConfigError(f"folders: watch, output and work must be three different folders ({roles})")


def _create_folders(folders: Folders) -> None:
    for name in ("watch", "output", "work"):
        folder: Path = getattr(folders, name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"folders.{name}: cannot create {folder}: {exc.strerror or exc}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"folders.{name}: {folder} is not writable")
    for sub in (folders.rejected, folders.dead_letter, folders.spool):
        try:
            sub.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"folders: cannot create {sub}: {exc.strerror or exc}") from exc


def _check_ae_title(key: str, aet: str) -> None:
    stripped = aet.strip()
    if not stripped or len(aet) > AE_TITLE_MAX or "\\" in aet or not aet.isascii() or not aet.isprintable():
        raise ConfigError(f"{key}: {aet!r} is not an AE title (1-{AE_TITLE_MAX} printable ASCII "
                          "characters, no backslash)")


def _check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: {port} is out of range 1-65535")


def _check_host(key: str, host: str) -> None:
    if not host.strip():
        raise ConfigError(f"{key}: empty host")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value:g}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
