"""``ecg-dicom convert --engine ray``: the same conversion on Ray Data, on one machine or a cluster.

The driver finds the inputs (:func:`ecg_dicom.convert.archive.find_inputs`) and makes a Ray Dataset
of their paths; ``map_batches`` hands batches of paths to a pool of :class:`BatchConverter`
actors, each of which loads the model once and runs :func:`ecg_dicom.convert.batch.convert_batch`
(the single-process engine's own batch step: skip what is done, read, reconstruct in
groups of model windows, write atomically, reason files for refused inputs). Only paths
and one short status row per input travel through Ray's object store; signals and results
go straight between the workers and the file system, so memory stays bounded whatever the
archive's size. Input and output folders must therefore be reachable at the same paths
from every node (a shared file system) when running on a cluster.

Where Ray writes: a local instance keeps its session files (logs, sockets, spilled
objects) under ``--ray-temp-dir``, by default a fresh ``ecg-dicom-ray-*`` folder in the
system temporary folder (``$TMPDIR``) that is removed after a clean run. It is given a
random authentication token through the environment, so nothing is written to
``~/.ray`` either. A cluster joined with ``--address`` writes where it was started to.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ecg_dicom.convert.archive import ArchiveItem
from ecg_dicom.convert.batch import (
    FILES_PER_BATCH,
    ConvertReport,
    ConvertSettings,
    ItemResult,
    convert_batch,
    find_archive,
    reject,
)
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.errors import EcgDicomError
from ecg_dicom.extras import install_hint
from ecg_dicom.leads import SUPPORTED_INPUT_LEADS
from ecg_dicom.inputs import FS_ASSUMED, FS_GIVEN, NPY_DEFAULT_FS

log = logging.getLogger(__name__)

INSTALL_HINT = f"--engine ray needs Ray, an optional extra: {install_hint('scale')}"
TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
# Ray puts its sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store,
# and a Unix socket path may not exceed 107 bytes.
MAX_TEMP_DIR_CHARS = 40
THREADS_PER_WORKER = 1  # one core per actor: processes scale better than intra-op threads
# A batch whose worker process dies (killed, out of memory, a crash in native code) is tried
# again on a fresh worker this many times; then its inputs are reported as not converted
# and the job goes on (Ray Data's default would retry it forever).
BATCH_RETRIES = 2


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or an EcgDicomError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra
    except ImportError as exc:
        raise EcgDicomError(f"{INSTALL_HINT} ({exc})") from None
    return ray


class BatchConverter:
    """The ``map_batches`` callable: one per Ray worker, holding the model it loaded once.

    A batch is a dict of equal-length arrays (the :meth:`ArchiveItem.to_row` fields); the
    answer has one row per input: ``name``, ``status`` ("converted", "rejected", "done")
    and ``reason``.
    """

    def __init__(self, checkpoint: str | None, input_lead: str, device: str, batch_size: int,
                 settings: dict[str, Any], threads: int = THREADS_PER_WORKER, precision: str = "fast") -> None:
        self.reconstructor = Reconstructor.from_checkpoint(checkpoint, input_lead, device, batch_size,
                                                           precision=precision, threads=threads)
        self.settings = ConvertSettings(**settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["source"])
        items = [ArchiveItem.from_row({key: batch[key][i] for key in batch}) for i in range(n)]
        results = convert_batch(items, self.reconstructor, self.settings)
        return {"name": np.array([r.name for r in results], dtype=object),
                "status": np.array([r.status for r in results], dtype=object),
                "reason": np.array([r.reason for r in results], dtype=object)}


def local_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def ray_session(address: str | None = None, temp_dir: str | Path | None = None,
                num_cpus: int | None = None) -> Iterator[Path | None]:
    """Connect to Ray for the duration of the block; yields the local instance's temp folder.

    Already connected (a caller's own ``ray.init``): use that session and leave it open.
    ``address`` ("auto" or "HOST:PORT"): join that cluster. Otherwise start a local instance
    with ``num_cpus`` CPUs whose files all go under ``temp_dir`` (default: ``ray/`` in a fresh
    private folder in ``$TMPDIR``, removed afterwards unless the block failed), and stop it
    at the end. Ray makes ``temp_dir`` world-writable.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield None
        return
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is a setup error
            raise EcgDicomError(f"cannot join the Ray cluster at {address}: {exc}") from None
        try:
            yield None
        finally:
            ray.shutdown()
        return
    own_temp = temp_dir is None
    # Ray makes its temp folder world-writable (0777); a private (0700) folder around it keeps
    # other local users out of its logs, which name input files.
    private = Path(tempfile.mkdtemp(prefix="ecg-dicom-ray-")).resolve() if own_temp else None
    temp = private / "ray" if private is not None else Path(temp_dir).resolve()
    if len(str(temp)) > MAX_TEMP_DIR_CHARS:
        raise EcgDicomError(f"Ray's temp folder {temp} is too long a path for its sockets: give"
                            f" --ray-temp-dir (or $TMPDIR) a path of at most {MAX_TEMP_DIR_CHARS} characters")
    temp.mkdir(parents=True, exist_ok=True)
    saved_env = {key: os.environ.get(key) for key in TOKEN_VARIABLES}
    if not any(saved_env.values()):
        # Token authentication stays on, with a token that lives only in this process's
        # environment (inherited by the Ray processes it starts), not in ~/.ray.
        # (RAY_AUTH_MODE is left for ray.init to set: it then also refreshes its cached config.)
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    failed = True
    try:
        try:
            ray.init(num_cpus=num_cpus or local_cpus(), include_dashboard=False, _temp_dir=str(temp),
                     logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - e.g. socket paths too long under temp_dir
            raise EcgDicomError(f"cannot start a local Ray instance under {temp}: {exc}") from None
        try:
            yield temp
            failed = False
        finally:
            ray.shutdown()
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if private is not None and not failed:
            shutil.rmtree(private, ignore_errors=True)
        elif private is not None:
            print(f"ecg-dicom convert: Ray's logs are in {temp}", file=sys.stderr)


def convert_archive(input_dir: str | Path, output_dir: str | Path, settings: ConvertSettings,
                    checkpoint: str | Path | None = None, input_lead: str = "I", device: str = "cpu",
                    batch_size: int = 32, num_workers: int | None = None,
                    files_per_batch: int = FILES_PER_BATCH, exclude: tuple[Path, ...] = (),
                    converter: type = BatchConverter, precision: str = "fast") -> ConvertReport:
    """Convert every input below ``input_dir`` on the connected Ray cluster (see :func:`ray_session`).

    Same inputs, results, reasons and skip-what-is-done rule as
    :func:`ecg_dicom.convert.batch.convert_folder`. ``num_workers`` actors (default: one per CPU
    of the cluster), each with one CPU and one model thread (``precision`` as in
    :meth:`Reconstructor.from_checkpoint`), take ``files_per_batch``
    inputs at a time (fewer when the archive is small), ``batch_size`` windows per forward
    pass. Rejected inputs are named on stderr as their rows arrive. An input whose batch's
    worker died :data:`BATCH_RETRIES` + 1 times is rejected with that reason by the driver.
    ``converter`` is the ``map_batches`` class (:class:`BatchConverter`).
    """
    ray = import_ray()
    items = find_archive(input_dir, output_dir, settings.output_format, exclude)
    report = ConvertReport()
    if not items:
        return report
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, min(num_workers or cluster_cpus, len(items)))
    if workers > cluster_cpus:
        log.warning("%d workers asked for, the cluster has %d CPUs now: some wait for more nodes",
                    workers, cluster_cpus)
    # Small archives: smaller batches, so that every worker gets some.
    per_batch = max(1, min(files_per_batch, math.ceil(len(items) / workers)))
    rows = [item.to_row() for item in items]
    dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_batch))
    with warnings.catch_warnings():  # max_task_retries is a Ray remote argument, fine in the pinned Ray 2.60
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        converted = dataset.map_batches(
            converter,
            fn_constructor_kwargs={"checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
                                   "input_lead": input_lead, "device": device, "batch_size": batch_size,
                                   "settings": asdict(settings), "precision": precision},
            batch_size=per_batch,
            batch_format="numpy",
            # one batch in flight per worker: a worker that dies takes no queued batch down with it
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=THREADS_PER_WORKER,
            max_task_retries=BATCH_RETRIES,
        )
    converted.context.max_errored_blocks = -1  # a batch lost after its retries is reported below
    reported: set[str] = set()
    try:
        for batch in converted.iter_batches(batch_size=None, batch_format="numpy"):
            for name, status, reason in zip(batch["name"], batch["status"], batch["reason"]):
                report.add(ItemResult(str(name), str(status), str(reason)))
                reported.add(str(name))
    except ray.exceptions.RayError as exc:  # e.g. a worker that cannot load the model
        raise EcgDicomError(f"the Ray job failed: {exc}") from None
    if len(reported) < len(items):
        for item in items:
            if item.name not in reported:
                report.add(reject(item, f"not converted: the Ray worker converting its batch died"
                                        f" {BATCH_RETRIES + 1} times (see Ray's logs)"))
    return report


def run_ray(args: argparse.Namespace) -> int:
    """``ecg-dicom convert --engine ray``: the exit status rule of ``convert`` (0, 1, 2)."""
    started = time.perf_counter()
    try:
        import_ray()
        if args.num_workers is not None and args.num_workers < 1:
            raise EcgDicomError("--num-workers must be at least 1")
        if args.input_lead not in SUPPORTED_INPUT_LEADS:
            raise EcgDicomError(f"--input-lead {args.input_lead} needs --engine single (the Ray engine runs one"
                                " model per worker)")
        # Loaded here once to fail early (exit 2) on a bad checkpoint; each worker loads its own.
        Reconstructor.from_checkpoint(args.checkpoint, args.input_lead, "cpu", precision=args.precision, threads=1)
        settings = ConvertSettings(NPY_DEFAULT_FS if args.fs is None else args.fs, args.units, args.output_format,
                                   args.confidence, args.paper if getattr(args, "report", False) else None,
                                   fs_source=FS_ASSUMED if args.fs is None else FS_GIVEN)
        local = args.address is None
        cpus = max(local_cpus(), args.num_workers or 0) if local else None
        temp_dir = Path(args.ray_temp_dir).resolve() if args.ray_temp_dir else None
        with ray_session(args.address, temp_dir, cpus) as temp:
            report = convert_archive(args.input_dir, args.output_dir, settings, args.checkpoint,
                                     args.input_lead, args.device, args.batch_size, args.num_workers,
                                     files_per_batch=args.batch_size, exclude=(temp,) if temp is not None else (),
                                     precision=args.precision)
    except EcgDicomError as exc:
        print(f"ecg-dicom convert: {exc}", file=sys.stderr)
        return 2
    print(f"{report.summary(time.perf_counter() - started)} -> {args.output_dir}", file=sys.stderr)
    return 1 if report.failed else 0
