"""Site configuration: one YAML file validated at start into one typed :class:`Settings`.

Every section is a frozen dataclass validated by pydantic; the YAML keys are the field
names. An unknown key, a wrong type, a port out of range, a bad AE title or a folder that
cannot be created raises :class:`ConfigError` whose message starts with the dotted key
(``listen.port: ...``), so ``ecg-dicom serve`` can print it and exit with status 2.
Relative paths are relative to the folder holding the config file.

Adding a setting: add a typed field (with its default and a docstring line) to the section's
dataclass; constraints go in ``Field(...)``/``Annotated`` or a ``field_validator``. Types are
strict (``"11112"`` is not a port, ``true`` is not a number).

    ae_title: ECGDICOM
    listen: {host: 127.0.0.1, port: 11112}
    allowed_callers: [CART1]        # absent = any caller (a warning is logged at start)
    input_lead: I                   # I, II or auto (the best lead of a multi-lead source)
    folders: {watch: var/inbox, output: var/outbox, work: var/work}
    pacs: {ae_title: PACS, host: 127.0.0.1, port: 4242}   # absent = no delivery
    # or / and: pacs: {dicomweb: {url: http://127.0.0.1:8042/dicom-web}}
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from ecg_dicom.errors import ConfigError
from ecg_dicom.core.leadchoice import INPUT_LEAD_CHOICES
from ecg_dicom.limits import Limits

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
AE_TITLE_MAX = 16
_STRICT = ConfigDict(extra="forbid", frozen=True)  # field types are Strict*: no "11112" for 11112


def _ae_title(value: str) -> str:
    if not value.strip() or len(value) > AE_TITLE_MAX or "\\" in value or not value.isascii() \
            or not value.isprintable():
        raise ValueError(f"{value!r} is not an AE title (1-{AE_TITLE_MAX} printable ASCII characters, "
                         "no backslash)")
    return value


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.x, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(value: str) -> str:
    if not value.strip():
        raise ValueError("empty host")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def _config_path(value: Any, info: ValidationInfo) -> Path:
    """A path from the YAML: ``~`` expanded, relative to the config file's folder."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise ValueError(f"expected a path (string), got {_kind(value)}")
    path = Path(os.path.expanduser(str(value)))
    base = (info.context or {}).get("base")
    return path if path.is_absolute() or base is None else (Path(base) / path).resolve()


AeTitle = Annotated[StrictStr, AfterValidator(_ae_title)]
Host = Annotated[StrictStr, AfterValidator(_host)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Seconds = Annotated[StrictFloat, Field(gt=0)]
Count = Annotated[StrictInt, Field(ge=1)]


ConfigPath = Annotated[Path, BeforeValidator(_config_path)]


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file {value}")
    return value


ConfigFile = Annotated[ConfigPath, AfterValidator(_existing_file)]


@dataclass(config=_STRICT)
class ServerTls:
    """DICOM TLS on the listener: our ``cert`` and ``key`` (PEM); ``ca``: the CA(s) client
    certificates are checked against; ``require_client_cert``: refuse clients without one."""

    cert: ConfigFile
    key: ConfigFile
    ca: ConfigFile | None = None
    require_client_cert: StrictBool = False

    @model_validator(mode="after")
    def _ca_for_client_certs(self) -> "ServerTls":
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA client certificates are checked against)")
        return self


@dataclass(config=_STRICT)
class ClientTls:
    """DICOM TLS to the PACS: ``ca`` verifies the PACS's certificate (and host name);
    ``cert``/``key``: ours, for a PACS that requires client certificates."""

    ca: ConfigFile
    cert: ConfigFile | None = None
    key: ConfigFile | None = None

    @model_validator(mode="after")
    def _pair(self) -> "ClientTls":
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


@dataclass(config=_STRICT)
class Listen:
    """Where the C-STORE SCP listens; ``timeout_s`` is its DIMSE timeout (a message begun
    must be complete within it).

    ``handshake_timeout_s``: how long a new connection may take to complete TLS and send its
    A-ASSOCIATE request (real carts need milliseconds), so idle connections cannot hold the
    listener; ``max_pending``: connections allowed to be in that phase at once (they take no
    association slot; past it the oldest of the address holding the most is dropped).
    ``idle_timeout_s``: an association on which nothing arrives for this long is aborted;
    ``preempt_idle_s``: while every slot is taken, an association that has sent no DIMSE
    message and has been idle this long gives its slot to a new request (one that has, after
    2 s idle; never one in the middle of a store). ``tls``: DICOM TLS; with it,
    plain connections are refused. ``insecure_plaintext_ok``: listening on an address other
    than loopback without TLS is refused at start unless this is true (see README, Security).
    """

    host: Host = "127.0.0.1"
    port: Port = 11112
    timeout_s: Seconds = 30.0
    handshake_timeout_s: Seconds = 3.0
    max_pending: Count = 256
    idle_timeout_s: Seconds = 10.0
    preempt_idle_s: Seconds = 0.2
    tls: ServerTls | None = None
    insecure_plaintext_ok: StrictBool = False

    @model_validator(mode="after")
    def _plaintext_on_a_network(self) -> "Listen":
        if self.tls is None and not self.insecure_plaintext_ok and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address and tls is not set: DICOM would travel unencrypted "
                "and AE titles are not secrets. Configure listen.tls (a mounted certificate and key), or set "
                "listen.insecure_plaintext_ok: true to accept plain DICOM on the network (README, Security)")
        return self


@dataclass(config=_STRICT)
class Http:
    """Health (``/health``) and Prometheus metrics (``/metrics``) over HTTP; absent = off."""

    host: Host = "127.0.0.1"
    port: Port = 9110


@dataclass(config=_STRICT)
class Folders:
    """``watch``: dropped inputs; ``output``: results (+ ``rejected/``, ``dead-letter/``);
    ``work``: the durable queue and the spool. Three different folders."""

    watch: ConfigPath
    output: ConfigPath
    work: ConfigPath

    @model_validator(mode="after")
    def _distinct(self) -> "Folders":
        roles = {"watch": self.watch, "output": self.output, "work": self.work}
        if len(set(roles.values())) < len(roles):
            raise ValueError(f"watch, output and work must be three different folders ({roles})")
        return self

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


def _env_name(value: str) -> str:
    if not value or not all(ch.isalnum() or ch == "_" for ch in value) or value[0].isdigit():
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _web_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials do not belong in the URL (they would end up in logs): use pacs.dicomweb.auth")
    if parts.query or parts.fragment:
        raise ValueError("the service root URL takes no query or fragment")
    return value.rstrip("/")


@dataclass(config=_STRICT)
class WebAuth:
    """Credentials for the DICOMweb endpoint, never written in the YAML: the secret (the
    password for ``basic``, the token for ``bearer``) is read from ``secret_file`` (its
    first line) or the environment variable ``secret_env``, again before every request
    (a rotated token is picked up without a restart)."""

    scheme: Literal["basic", "bearer"]
    username: StrictStr | None = None
    secret_file: ConfigFile | None = None
    secret_env: Annotated[StrictStr, AfterValidator(_env_name)] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> "WebAuth":
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret_file and secret_env")
        if (self.scheme == "basic") != (self.username is not None):
            raise ValueError("username goes with scheme basic (and only with it)")
        return self


@dataclass(config=_STRICT)
class DicomWeb:
    """A DICOMweb (STOW-RS) endpoint results are POSTed to: ``url`` is the service root
    (``http://host:8042/dicom-web``; instances go to ``<url>/studies``); ``ca``: the CA
    bundle an https server's certificate is checked against (absent: the system's);
    ``auth``: basic or bearer credentials (absent: none)."""

    url: Annotated[StrictStr, AfterValidator(_web_url)]
    ca: ConfigFile | None = None
    auth: WebAuth | None = None


@dataclass(config=_STRICT)
class Pacs:
    """Where results are delivered, and how hard to try: a C-STORE peer (``ae_title``,
    ``host``, ``port``), a DICOMweb STOW-RS endpoint (``dicomweb``), or both (a job is
    delivered when both have it).

    A transient failure is retried after ``retry_initial_s * 2**(attempt-1)`` seconds (at
    most ``retry_max_s``, times a random jitter in [0.5, 1]); a job still undelivered
    ``give_up_after_s`` seconds after its results were written goes to the dead-letter folder.
    ``storage_commitment``: a C-STOREd job counts as delivered only once the PACS commits its
    instances (Storage Commitment Push Model); without a report within
    ``commitment_timeout_s`` the job is sent and asked for again (a transient failure).
    """

    ae_title: AeTitle | None = None
    host: Host | None = None
    port: Port | None = None
    timeout_s: Seconds = 30.0
    retry_initial_s: Seconds = 5.0
    retry_max_s: Seconds = 600.0
    give_up_after_s: Seconds = 7 * 24 * 3600.0
    tls: ClientTls | None = None
    dicomweb: DicomWeb | None = None
    storage_commitment: StrictBool = False
    commitment_timeout_s: Seconds = 300.0

    @model_validator(mode="after")
    def _destinations(self) -> "Pacs":
        given = [name for name in ("ae_title", "host", "port") if getattr(self, name) is not None]
        if given and len(given) < 3:
            missing = sorted({"ae_title", "host", "port"} - set(given))
            raise ValueError("a C-STORE peer needs ae_title, host and port: "
                             + ", ".join(repr(f"pacs.{name}") for name in missing) + " missing")
        if not given and self.dicomweb is None:
            raise ValueError("name a C-STORE peer (ae_title, host, port), a dicomweb endpoint, or both")
        if not given and (self.storage_commitment or self.tls is not None):
            raise ValueError("storage_commitment and tls are for a C-STORE peer (ae_title, host, port)")
        return self

    @property
    def cstore(self) -> bool:
        """True when a C-STORE peer is configured."""
        return self.host is not None

    def describe(self) -> str:
        """Where results go, for logs and messages (no credentials)."""
        where = []
        if self.cstore:
            where.append(f"{self.ae_title}@{self.host}:{self.port}"
                         + (" (storage commitment)" if self.storage_commitment else ""))
        if self.dicomweb is not None:
            where.append(f"STOW-RS {self.dicomweb.url}")
        return " and ".join(where)


@dataclass(config=_STRICT)
class Worker:
    """Batching: up to ``batch_size`` jobs per model call. When several jobs are waiting (a
    burst), the worker waits at most ``max_wait_s`` for the batch to fill; a job that arrives
    alone is worked on at once (waiting would only add to its latency)."""

    batch_size: Count = 8
    max_wait_s: Annotated[StrictFloat, Field(ge=0)] = 0.02


@dataclass(config=_STRICT)
class Watcher:
    """A dropped file is taken once closed, or once its size has not changed for
    ``stable_s`` seconds; the folder is also rescanned every ``rescan_s`` seconds. A ``.npy``
    without its ``<stem>.json`` sidecar waits ``sidecar_wait_s`` for one (0: not at all); a file
    that looks cut short waits ``incomplete_wait_s`` unchanged for the rest, then is taken
    (and rejected); a sidecar with no ``.npy`` beside it is rejected after ``stray_sidecar_s``."""

    stable_s: Seconds = 1.0
    rescan_s: Seconds = 5.0
    sidecar_wait_s: Annotated[StrictFloat, Field(ge=0)] = 2.0
    incomplete_wait_s: Seconds = 10.0
    stray_sidecar_s: Seconds = 300.0


@dataclass(config=_STRICT)
class Report:
    """The 12-lead page drawn for every result (``<name>.pdf`` and, sent to PACS with the
    waveform, ``<name>.report.dcm``): ``enabled`` (default on) and ``paper`` (A4 or Letter)."""

    enabled: StrictBool = True
    paper: Literal["A4", "Letter"] = "A4"


@dataclass(config=_STRICT)
class AccuracyMonitor:
    """The live accuracy monitor on sources that also carry the leads we reconstruct (a
    12-lead DICOM object): per learned lead, r against the measured lead. When the median
    over the last ``window`` records of a lead falls more than ``margin`` below the model
    card's r for that lead, ``/health`` says ``degraded`` and a warning is logged once a day.
    ``enabled: false``: no figures kept (the result's ``.json`` still carries them)."""

    enabled: StrictBool = True
    margin: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.1
    window: Count = 50


@dataclass(config=_STRICT)
class Settings:
    """The whole validated configuration of one service instance."""

    ae_title: AeTitle
    folders: Folders
    listen: Listen = field(default_factory=Listen)
    # calling AE titles let in; None (key absent) = any caller, warned at start
    allowed_callers: Annotated[tuple[AeTitle, ...], Field(min_length=1)] | None = None
    # the lead the model takes: I, II, I+II (two leads measured), or auto (for a source holding several leads the one the
    # model does best from: core/leadchoice.py; a one-lead source: its sidecar's lead, else I)
    input_lead: Literal[INPUT_LEAD_CHOICES] = "I"  # type: ignore[valid-type]
    pacs: Pacs | None = None
    checkpoint: ConfigPath | None = None
    device: StrictStr = "cpu"
    # fast: the checkpoint's ONNX export (int8 weights, ONNX Runtime, no torch loaded) when it
    # was made from these weights; fp32: the checkpoint itself in exact fp32 (torch)
    precision: Literal["fast", "fp32"] = "fast"
    # intra-op threads of the model (ONNX Runtime or torch); 1 keeps latency steady on a shared
    # machine (more threads than idle cores makes each forward pass many times slower), raise it
    # on a dedicated server
    torch_threads: Count = 1
    worker: Worker = field(default_factory=Worker)
    watcher: Watcher = field(default_factory=Watcher)
    report: Report = field(default_factory=Report)
    max_associations: Count = 10
    limits: Limits = field(default_factory=Limits)  # input sizes and the queue's high-water mark
    http: Http | None = None  # /health and /metrics; absent = off
    accuracy_monitor: AccuracyMonitor = field(default_factory=AccuracyMonitor)
    # a source that already holds all 12 measured leads (a cart's 12-lead DICOM): its result is
    # kept locally (outbox, accuracy monitor) and not sent to the PACS, unless this is true
    deliver_when_source_complete: StrictBool = False
    log_level: Annotated[StrictStr, AfterValidator(_log_level)] = "INFO"
    source: Path | None = Field(default=None, exclude=True)  # the file read (set by load_config, not YAML)

    @field_validator("allowed_callers", mode="before")
    @classmethod
    def _callers_list(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("empty list would refuse every caller; leave the key out to allow any caller")
        if value is not None and not isinstance(value, list):
            raise ValueError(f"expected a list of AE titles, got {_kind(value)}")
        return tuple(value) if isinstance(value, list) else value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file {value}")
        return value

    @model_validator(mode="after")
    def _one_checkpoint_one_lead(self) -> "Settings":
        if self.checkpoint is not None and self.input_lead == "auto":
            raise ValueError("checkpoint: a checkpoint is a model for one lead; input_lead auto uses the shipped"
                             " model of each lead (leave checkpoint out, or set input_lead to the checkpoint's lead)")
        return self


_SETTINGS = TypeAdapter(Settings)


def load_config(path: str | Path) -> Settings:
    """Read and validate ``path``; create the folders it names. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of keys, got {_kind(raw)}")
    if "source" in raw:
        raise ConfigError("unknown key 'source'")
    try:
        settings = _SETTINGS.validate_python({**raw, "source": path.resolve()},
                                             context={"base": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None
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
                settings.pacs.describe() if settings.pacs else "none",
                settings.checkpoint or "shipped", settings.worker.batch_size, settings.folders.watch,
                settings.folders.output, settings.folders.work)
    if settings.allowed_callers is None:
        logger.warning("allowed_callers is not set: any calling AE title may store to %s",
                       settings.ae_title)


def _first_error(exc: ValidationError) -> str:
    """``<dotted key>: <what is wrong>`` for the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    key = _dotted(err["loc"])
    kind = err["type"]
    if kind == "unexpected_keyword_argument":
        return f"unknown key {key!r}"
    if kind == "missing" or kind == "missing_argument":
        return f"{key}: required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("dataclass_type", "dataclass_exact_type", "dict_type", "model_type"):
        message = "expected a mapping"
    return f"{key or 'config'}: {message}, got {_kind(err.get('input'))}" if kind.endswith("_type") \
        else f"{key or 'config'}: {message}"


def _dotted(loc: tuple) -> str:
    """('allowed_callers', 1) -> 'allowed_callers[1]'; ('listen', 'port') -> 'listen.port'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tuple[")):  # pydantic's names of validator steps
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


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


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
