"""``ecg-dicom convert``: a tree of one-lead inputs -> 12-lead ``.npy`` and/or DICOM files.

Inputs are found recursively (:func:`ecg_dicom.convert.archive.find_inputs`), and their results
written under the output folder with the same relative layout. Inputs are read and checked
one by one (a bad file gets a reason file and the others go on), converted in shared
batches (:func:`convert_batch`, also what each Ray worker runs with ``--engine ray``), and
written atomically, with a completion marker last, so a re-run skips what is done and
redoes what an interruption left unfinished. Nothing in the input tree is ever modified.

Durability per batch, not per file: a batch's results are written (temporary file +
rename, no fsync), then one ``syncfs`` makes them all durable, then their completion
markers are written and synced the same way. A marker therefore never reaches the disk
before the results it vouches for, as with an fsync per file, at two syncs per batch
instead of four per ECG (~5 ms each here). A crash loses at most the markers of the batch
in hand: those inputs are converted again on the next run.

Only what the inputs need is imported: no torch on the default (ONNX Runtime) path, no
pydicom without DICOM inputs or outputs, no progress bar without a terminal.

Parallelism: ``workers`` processes (forked, so imports and the model's header are paid
once), each converting whole batches with a one-thread model runtime: reading, the
signal-quality gate, the model and writing all run on every core, and no thread ever waits
for another. On a machine busy with other work this degrades like any other process,
instead of collapsing as thread pools that spin-wait for their slowest thread do.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ecg_dicom import __version__
from ecg_dicom.convert.archive import ArchiveItem, clear_done, find_inputs, is_done, mark_done
from ecg_dicom.core.checkpoint import Checkpoint, Preprocessing
from ecg_dicom.core.inference import Reconstructor
from ecg_dicom.core.leadchoice import AUTO, model_leads
from ecg_dicom.core.runners import OnnxRunner, default_threads
from ecg_dicom.errors import EcgDicomError, InputError
from ecg_dicom.extras import require
from ecg_dicom.files import deferred_sync, sync_filesystem, write_reason
from ecg_dicom.inputs import FS_ASSUMED, FS_GIVEN, NPY_DEFAULT_FS, LeadInput, gate_many, load_input
from ecg_dicom.logsafe import strip_wire
from ecg_dicom.leads import learned_leads
from ecg_dicom.outputs.results import OUTPUT_FORMATS, write_outputs
from ecg_dicom.sidecar import sidecar_path, stray_sidecars

if TYPE_CHECKING:
    from ecg_dicom.core.model import BiLSTMAttentionModel

log = logging.getLogger(__name__)

FILES_PER_BATCH = 32  # inputs handed to convert_batch at a time (a Ray map_batches batch)
WINDOWS_PER_CALL = 512  # model windows per reconstruct call: bounds memory whatever the records' lengths

CONVERTED, REJECTED, DONE = "converted", "rejected", "done"


@dataclass(frozen=True)
class ConvertSettings:
    """How inputs are read and what is written for each; recorded in each completion marker.

    fs (Hz) and units apply to ``.npy`` inputs (DICOM brings its own), fs_source says whether
    fs was given (``--fs``) or assumed (not part of the marker: the results are the same);
    output_format is one
    of :data:`OUTPUT_FORMATS`; confidence adds ``<stem>.confidence.json``; report is the
    paper size ("A4", "Letter") of the 12-lead page (``<stem>.pdf``, and ``<stem>.report.dcm``
    with DICOM output), or None for no page; input_lead: "auto" to choose per input among the
    models given to :func:`convert_batch` (None: the reconstructor's lead).
    """

    fs: float = 500.0
    units: str = "uV"
    output_format: str = "npy"
    confidence: bool = False
    report: str | None = None
    input_lead: str | None = None
    fs_source: str = FS_ASSUMED

    def marker_settings(self, reconstructor: Reconstructor,
                        models: dict[str, Reconstructor] | None = None) -> dict:
        """What a completed result must have been made with to count as done."""
        models = models or {reconstructor.input_lead: reconstructor}
        settings = {k: v for k, v in asdict(self).items() if k != "fs_source"}
        return {**settings, "input_lead": self.input_lead or reconstructor.input_lead,
                "model_version": "+".join(m.model_version for m in models.values()),
                "precision": reconstructor.precision, "ecg_dicom": __version__}


@dataclass
class ItemResult:
    """What became of one input: ``status`` is "converted", "rejected" or "done" (skipped,
    complete from an earlier run); ``reason`` says why it was rejected."""

    name: str
    status: str
    reason: str = ""
    written: list[Path] = field(default_factory=list)
    fs_assumed: float | None = None  # converted at a rate nothing said (Hz)
    rate_warning: str = ""  # the gate suspects the rate: its flag's text


@dataclass
class ConvertReport:
    """What a conversion did, per input name (``"a/b/x"``, its results' path below the output
    root without extension): written files, reasons for failures, and inputs already done."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    fs_assumed: dict[str, float] = field(default_factory=dict)  # converted at a rate nothing said

    def add(self, result: ItemResult) -> None:
        if result.status == CONVERTED:
            self.written[result.name] = result.written
            if result.fs_assumed is not None:
                self.fs_assumed[result.name] = result.fs_assumed
            if result.rate_warning:
                print(f"ecg-dicom: {result.name}: {result.rate_warning}", file=sys.stderr)
        elif result.status == REJECTED:
            self.failed[result.name] = result.reason
            print(f"ecg-dicom: skipped {result.name}: {result.reason}", file=sys.stderr)
        else:
            self.done.append(result.name)

    def assumed_rate_note(self) -> str | None:
        """One line naming the inputs converted at an assumed rate (a .npy without a sidecar's
        ``fs`` and no ``--fs``), or None."""
        if not self.fs_assumed:
            return None
        names = sorted(self.fs_assumed)
        rates = sorted(set(self.fs_assumed.values()))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return (f"ecg-dicom: {len(names)} .npy input(s) without a sidecar's fs: rate assumed"
                f" {'/'.join(f'{r:g}' for r in rates)} Hz (say it with --fs or a sidecar): {shown}")

    def summary(self, seconds: float) -> str:
        """``converted N, rejected M, skipped as done K in T s (R ECG/s)``."""
        rate = len(self.written) / seconds if seconds > 0 else 0.0
        return (f"converted {len(self.written)}, rejected {len(self.failed)}, skipped as done {len(self.done)}"
                f" in {seconds:.1f} s ({rate:.1f} ECG/s)")


def reject(item: ArchiveItem, reason: str) -> ItemResult:
    """Record a refused input: no completion marker, a reason file beside where its results would be."""
    reason = strip_wire(reason)  # values from the input kept, escaped, without their marks
    try:
        clear_done(item)
        write_reason(item.out_dir, item.stem, reason)
    except OSError as exc:
        log.error("%s: cannot write its reason file (%s)", item.name, exc.strerror)
    return ItemResult(item.name, REJECTED, reason)


def _load(item: ArchiveItem, reconstructor: Reconstructor, settings: ConvertSettings,
          models: dict[str, Reconstructor]) -> LeadInput:
    """Read and check one input (raises InputError with the reason); the signal-quality gate
    comes after, for the whole batch (:func:`ecg_dicom.inputs.gate_many`), except for the lead
    ``input_lead: auto`` chose (gated to be chosen)."""
    return load_input(item.source, settings.input_lead or reconstructor.input_lead, settings.fs, settings.units,
                      sidecar_path(item.source), gated=False, models=tuple(models), fs_source=settings.fs_source)


def _window_groups(loaded: list[tuple[int, ArchiveItem, LeadInput]], reconstructor: Reconstructor,
                   max_windows: int) -> Iterable[list[tuple[int, ArchiveItem, LeadInput]]]:
    """Consecutive groups of loaded inputs holding at most ``max_windows`` model windows each
    (an input longer than that forms a group of its own)."""
    group: list[tuple[int, ArchiveItem, LeadInput]] = []
    windows = 0
    for entry in loaded:
        n = reconstructor.count_windows(entry[2].signal_uv.shape[-1], entry[2].fs)
        if group and windows + n > max_windows:
            yield group
            group, windows = [], 0
        group.append(entry)
        windows += n
    if group:
        yield group


def _write(item: ArchiveItem, lead: LeadInput, recon, reconstructor: Reconstructor,
           settings: ConvertSettings) -> ItemResult:
    """Write one input's results (its completion marker comes later, see :func:`convert_batch`);
    a refusal becomes a reason file."""
    try:
        clear_done(item)
        item.out_dir.mkdir(parents=True, exist_ok=True)
        written = write_outputs(item.out_dir, item.stem, lead, recon, reconstructor,
                                settings.output_format, settings.confidence, settings.report)
    except (EcgDicomError, ValueError) as exc:
        return reject(item, str(exc))
    except OSError as exc:
        return reject(item, f"cannot write its results: {exc.strerror or exc}")
    (item.out_dir / f"{item.stem}.reason.txt").unlink(missing_ok=True)  # from an earlier, refused try
    rate = [f.text for f in (lead.quality.flags if lead.quality is not None else []) if f.code == "rate"]
    return ItemResult(item.name, CONVERTED, written=written, fs_assumed=lead.fs if lead.fs_assumed else None,
                      rate_warning=rate[0] if rate else "")


def _sync(items: Iterable[ArchiveItem]) -> None:
    """Make everything written for ``items`` durable: one sync per file system."""
    seen: set[int] = set()
    for item in items:
        try:
            device = item.out_dir.stat().st_dev
        except OSError:
            continue
        if device not in seen:
            seen.add(device)
            sync_filesystem(item.out_dir)


def convert_batch(items: Sequence[ArchiveItem], reconstructor: Reconstructor, settings: ConvertSettings,
                  max_windows: int = WINDOWS_PER_CALL,
                  progress: Callable[[float], None] | None = None,
                  models: dict[str, Reconstructor] | None = None) -> list[ItemResult]:
    """Convert a batch of inputs and write their results; one result per item, in order.

    An input whose results are complete from an earlier run (:func:`is_done`) is skipped;
    one that cannot be read, checked, reconstructed or written gets a reason file and does
    not stop the others. The rest are reconstructed together, in calls of at most
    ``max_windows`` model windows. ``progress(files)`` is told each bit of work done, in
    inputs (fractions of one while a long input is going through the model). On return
    everything written is durable, and each converted input's completion marker was
    written only after its results were. ``models``: every model by input lead, for
    ``settings.input_lead`` "auto" (default: ``reconstructor`` alone).
    """
    advance = progress or (lambda files: None)
    models = models or {reconstructor.input_lead: reconstructor}
    marker = settings.marker_settings(reconstructor, models)
    results: dict[int, ItemResult] = {}
    loaded: list[tuple[int, ArchiveItem, LeadInput]] = []
    for index, item in enumerate(items):
        if is_done(item, marker):
            results[index] = ItemResult(item.name, DONE)
            advance(1)
            continue
        try:
            loaded.append((index, item, _load(item, reconstructor, settings, models)))
        except InputError as exc:
            results[index] = reject(item, str(exc))
            advance(1)
        except Exception as exc:  # noqa: BLE001 - an unexpected reader failure is still the input's problem
            log.exception("%s: unexpected error while reading", item.name)
            results[index] = reject(item, f"unreadable input ({type(exc).__name__}: {exc})")
            advance(1)
    gated = []
    for entry, refusal in zip(loaded, gate_many([lead for _, _, lead in loaded])):  # the batch at once
        if refusal is None:
            gated.append(entry)
        else:
            results[entry[0]] = reject(entry[1], str(refusal))
            advance(1)
    loaded = gated
    written: list[tuple[int, ArchiveItem, LeadInput]] = []
    with deferred_sync():
        for group in _window_groups(loaded, reconstructor, max_windows):
            counted = [0.0]

            def windows_done(done: int, total: int, files: int = len(group), counted: list[float] = counted) -> None:
                now = files * done / total
                advance(now - counted[0])
                counted[0] = now

            recons = _reconstruct_by_lead(group, models, windows_done)
            for (index, item, lead), recon in zip(group, recons):
                if isinstance(recon, Exception):
                    results[index] = reject(item, f"reconstruction failed ({type(recon).__name__}: {recon})")
                else:
                    results[index] = _write(item, lead, recon, models[lead.lead], settings)
                    if results[index].status == CONVERTED:
                        written.append((index, item, lead))
            advance(len(group) - counted[0])
        _sync(items)  # the results, before any marker names them
        for index, item, lead in written:
            try:
                mark_done(item, marker, results[index].written, lead.content_hash)
            except OSError as exc:
                results[index] = reject(item, f"cannot write its completion marker: {exc.strerror or exc}")
        _sync(items)
    return [results[index] for index in range(len(items))]


def _reconstruct_by_lead(group: list[tuple[int, ArchiveItem, LeadInput]], models: dict[str, Reconstructor],
                         progress: Callable[[int, int], None]) -> list:
    """Each input of ``group`` reconstructed by the model of its lead (one call per model),
    in order; ``progress(done, total)`` in model windows of the whole group."""
    out: list = [None] * len(group)
    total = sum(models[lead.lead].count_windows(lead.signal_uv.size, lead.fs) for _, _, lead in group) or 1
    before = 0
    for name, model in models.items():
        members = [k for k, (_, _, lead) in enumerate(group) if lead.lead == name]
        if not members:
            continue

        def step(done: int, _total: int, before: int = before) -> None:
            progress(before + done, total)

        done = model.reconstruct_isolated([group[k][2].signal_uv for k in members], [group[k][2].fs for k in members],
                                          step)
        before += sum(model.count_windows(group[k][2].signal_uv.size, group[k][2].fs) for k in members)
        for k, recon in zip(members, done):
            out[k] = recon
    return out


def find_archive(input_dir: str | Path, output_dir: str | Path, output_format: str,
                 exclude: Sequence[Path] = ()) -> list[ArchiveItem]:
    """Check the folders (raises InputError / ValueError), create the output folder, find the
    inputs (:func:`find_inputs`) and name on stderr each sidecar that belongs to no input.
    What both engines do before converting."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InputError(f"input folder {input_dir} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    items = find_inputs(input_dir, output_dir, exclude)
    root = input_dir.resolve()  # the items' sources are resolved paths
    for stray in stray_sidecars(root, [item.source for item in items], exclude=[output_dir, *exclude]):
        print(f"ecg-dicom: {stray.relative_to(root)}: a sidecar with no {stray.stem}.npy beside it; not used",
              file=sys.stderr)
    return items


def convert_folder(input_dir: str | Path, output_dir: str | Path, reconstructor: Reconstructor,
                   fs: float | None = None, units: str = "uV", output_format: str = "npy",
                   confidence: bool = False, batch_size: int = FILES_PER_BATCH,
                   report_paper: str | None = None, workers: int = 1,
                   models: dict[str, Reconstructor] | None = None, input_lead: str | None = None) -> ConvertReport:
    """Convert every input below ``input_dir`` into ``output_dir``, on this machine.

    .npy inputs are one lead in ``units`` at ``fs`` Hz (None: 500 Hz assumed, and said so in
    each result's ``.json`` and on stderr) unless their ``<stem>.json`` sidecar says otherwise (the service's sidecar, patient and study included: :mod:`ecg_dicom.sidecar`);
    DICOM inputs bring their own. ``IN/a/x.npy`` gives ``OUT/a/x.npy`` (12, N) float32 µV
    and/or ``OUT/a/x.dcm``; a refused input gets ``OUT/a/x.reason.txt`` and a line on stderr;
    an input already converted with the same settings is skipped. ``batch_size`` inputs are
    read and converted at a time. ``report_paper``: also draw the 12-lead page on this paper
    ("A4", "Letter"), or None. ``workers`` > 1: that many forked processes convert the batches
    (see the module docstring), when the model runs in ONNX Runtime and the platform forks;
    else this process does. ``input_lead`` "auto" with ``models`` (one per lead): each input
    reconstructed from the lead the model does best from (:mod:`ecg_dicom.core.leadchoice`).
    """
    items = find_archive(input_dir, output_dir, output_format)
    settings = ConvertSettings(NPY_DEFAULT_FS if fs is None else fs, units, output_format, confidence, report_paper,
                               input_lead, FS_ASSUMED if fs is None else FS_GIVEN)
    report = ConvertReport()
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="file",
                   bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} files [{elapsed}<{remaining}]")
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    for results in _converted(batches, reconstructor, settings, workers, bar.update if bar else None, models):
        for result in results:
            report.add(result)
    if bar is not None:
        bar.close()
    return report


_worker_reconstructor: Reconstructor | None = None
_worker_models: dict[str, Reconstructor] | None = None


def _start_worker(parent: Reconstructor, models: dict[str, Reconstructor] | None = None) -> None:
    """In a forked worker: a runtime of its own, on one thread (one per model)."""
    global _worker_reconstructor, _worker_models
    _worker_reconstructor = parent.single_threaded_copy()
    _worker_models = None if models is None else {
        lead: (_worker_reconstructor if model is parent else model.single_threaded_copy())
        for lead, model in models.items()}


def _convert_in_worker(batch: list[ArchiveItem], settings: ConvertSettings) -> list[ItemResult]:
    assert _worker_reconstructor is not None
    return convert_batch(batch, _worker_reconstructor, settings, models=_worker_models)


def _converted(batches: list[list[ArchiveItem]], reconstructor: Reconstructor, settings: ConvertSettings,
               workers: int, progress: Callable[[float], None] | None,
               models: dict[str, Reconstructor] | None = None) -> Iterable[list[ItemResult]]:
    """Each batch's results, in order: from ``workers`` forked processes (``progress`` told
    of each finished batch), or from this one (``progress`` told as :func:`convert_batch` goes)."""
    workers = min(workers, len(batches))
    if (workers <= 1 or not all(isinstance(m.runner, OnnxRunner) for m in (models or {"": reconstructor}).values())
            or "fork" not in multiprocessing.get_all_start_methods()):
        for batch in batches:
            yield convert_batch(batch, reconstructor, settings, progress=progress, models=models)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker, initargs=(reconstructor, models))
    try:
        for batch, results in zip(batches, pool.map(_convert_in_worker, batches, [settings] * len(batches))):
            if progress is not None:
                progress(len(batch))
            yield results
    except BrokenProcessPool as exc:
        raise EcgDicomError(f"a conversion worker process died ({exc}); what it finished is kept,"
                            " run the command again to convert the rest") from None
    finally:
        pool.shutdown(cancel_futures=True)


def process_and_save_npy_files(input_folder: str | Path, output_folder: str | Path,
                               model: BiLSTMAttentionModel | Reconstructor | str | Path | None,
                               device: str = "cpu") -> ConvertReport:
    """The seed's API: convert every one-lead µV 500 Hz ``.npy`` in a folder to (12, N) µV.

    ``model`` may be a :class:`Reconstructor`, a checkpoint path or ``None`` (the shipped
    lead-I weights), both on the fast path, or a bare :class:`BiLSTMAttentionModel` for input
    lead I with the default preprocessing.
    """
    if isinstance(model, Reconstructor):
        reconstructor = model
    elif model is None or isinstance(model, (str, Path)):
        reconstructor = Reconstructor.from_checkpoint(model, input_lead="I", device=device, precision="fast")
    else:  # a torch module
        checkpoint = Checkpoint(model=model.eval(), input_lead="I", output_leads=learned_leads("I"),
                                model_version="in-memory", preprocessing=Preprocessing())
        reconstructor = Reconstructor(checkpoint, device=device)
    return convert_folder(input_folder, output_folder, reconstructor)


def run(args: argparse.Namespace) -> int:
    """``ecg-dicom convert`` on this machine's processes (``--engine single``): exit 0 when
    every input converted (or was done), 1 when any failed, 2 on setup errors."""
    started = time.perf_counter()
    try:
        if args.device.startswith("cuda"):
            torch = require("torch", f"--device {args.device}")

            if not torch.cuda.is_available():
                raise EcgDicomError(f"device {args.device} is not available on this machine")
        # ONNX Runtime: one single-threaded worker process per thread asked for (default: per
        # usable CPU); torch (--precision fp32): this process, with that many threads
        threads = default_threads(args.threads)
        if args.input_lead == AUTO and args.checkpoint:
            raise EcgDicomError("--checkpoint is a model for one lead; --input-lead auto uses the shipped model of"
                                " each lead")
        models = {lead: Reconstructor.from_checkpoint(args.checkpoint, lead, args.device, args.batch_size,
                                                      precision=args.precision,
                                                      threads=1 if args.precision == "fast" else threads)
                  for lead in model_leads(args.input_lead)}
        reconstructor = next(iter(models.values()))
        report = convert_folder(args.input_dir, args.output_dir, reconstructor, args.fs, args.units,
                                args.output_format, args.confidence, args.batch_size,
                                args.paper if args.report else None, workers=threads,
                                models=models, input_lead=args.input_lead)
    except EcgDicomError as exc:
        print(f"ecg-dicom convert: {exc}", file=sys.stderr)
        return 2
    note = report.assumed_rate_note()
    if note:
        print(note, file=sys.stderr)
    print(f"{report.summary(time.perf_counter() - started)} -> {args.output_dir}", file=sys.stderr)
    return 1 if report.failed else 0
