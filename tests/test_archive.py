"""Archives: recursive discovery, mirrored layout, names that never collide, resume after an
interruption, and one failing record failing alone (single-process engine; the Ray engine
runs the same code, see test_convert_ray.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import synthetic_lead

from ecg_dicom.convert.archive import find_inputs, is_done, output_stems
from ecg_dicom.cli import main
from ecg_dicom.convert.batch import ConvertSettings, convert_batch, convert_folder

CART = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_tree(root: Path, shared_data: Path) -> Path:
    """in/ with nested folders, a sidecar, a hidden folder, a name collision and a bad file."""
    inp = root / "in"
    (inp / "site_a" / "2024").mkdir(parents=True)
    (inp / "site_b").mkdir()
    (inp / ".cache").mkdir()
    np.save(inp / "top.npy", synthetic_lead(seed=1))
    np.save(inp / "site_a" / "2024" / "p1.npy", synthetic_lead(seed=2))
    np.save(inp / "site_a" / "2024" / "p2.npy", synthetic_lead(seed=3))
    (inp / "site_a" / "2024" / "p2.json").write_text('{"fs": 500}')
    np.save(inp / "site_b" / "same.npy", synthetic_lead(seed=4))
    shutil.copy(shared_data / CART, inp / "site_b" / "same.dcm")
    np.save(inp / "site_b" / "short.npy", synthetic_lead(1.0))
    np.save(inp / ".cache" / "hidden.npy", synthetic_lead(seed=5))
    (inp / "site_b" / "notes.txt").write_text("not an input")
    return inp


def test_discovery_is_recursive_sorted_and_skips_what_is_not_an_input(shared_data, tmp_path):
    inp = make_tree(tmp_path, shared_data)
    out = inp / "results"  # an output folder inside the input tree is never read as input
    out.mkdir()
    np.save(out / "old.npy", np.zeros((12, 5000), np.float32))
    items = find_inputs(inp, out)
    same = output_stems(["same.dcm", "same.npy"])
    assert [i.name for i in items] == sorted(["top", "site_a/2024/p1", "site_a/2024/p2", "site_b/short",
                                              f"site_b/{same['same.npy']}", f"site_b/{same['same.dcm']}"])
    assert {i.source.name for i in items} == {"top.npy", "p1.npy", "p2.npy", "same.npy", "same.dcm", "short.npy"}
    for item in items:
        assert item.out_dir == out.resolve() / item.source.parent.relative_to(inp.resolve())


def test_names_that_clean_up_alike_get_distinct_stems():
    stems = output_stems(["x.npy", "x.dcm", "a b.npy", "a_b.npy", "solo.npy"])
    assert len(set(stems.values())) == 5
    assert stems["solo.npy"] == "solo"
    assert stems["x.npy"].startswith("x-") and stems["x.dcm"].startswith("x-")
    assert output_stems(["x.dcm", "x.npy"]) == {k: stems[k] for k in ("x.dcm", "x.npy")}  # order-free


def test_tree_converts_into_the_same_layout_and_input_is_untouched(shared_data, tiny_checkpoint, tmp_path):
    inp = make_tree(tmp_path, shared_data)
    before = tree_digest(inp)
    out = tmp_path / "out"
    assert main(["convert", str(inp), str(out), "--checkpoint", str(tiny_checkpoint), "--format", "both"]) == 1
    assert tree_digest(inp) == before
    stems = output_stems(["same.dcm", "same.npy"])
    for name, n in (("top", 5000), ("site_a/2024/p1", 5000), (f"site_b/{stems['same.npy']}", 5000),
                    (f"site_b/{stems['same.dcm']}", 10_000)):
        assert np.load(out / f"{name}.npy").shape == (12, n), name
        assert pydicom.dcmread(out / f"{name}.dcm").SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert "too short" in (out / "site_b" / "short.reason.txt").read_text()
    assert not (out / ".cache").exists() and not list(out.rglob("hidden*"))
    assert not list(out.rglob(".*.part"))


def test_rerun_skips_what_is_done_and_redoes_what_is_partial(shared_data, tiny_checkpoint, tiny_reconstructor,
                                                             tmp_path):
    inp = make_tree(tmp_path, shared_data)
    out = tmp_path / "out"
    first = convert_folder(inp, out, tiny_reconstructor, output_format="both")
    assert set(first.failed) == {"site_b/short"} and len(first.written) == 5 and not first.done

    # An interruption's traces: one input lost its .dcm (killed between the two writes),
    # one marker is cut short, one input changed since; a half-written temp file lies around.
    (out / "site_a" / "2024" / "p1.dcm").unlink()
    (out / ".top.done.json").write_text('{"outputs": {"top.npy"')
    np.save(inp / "site_a" / "2024" / "p2.npy", synthetic_lead(seed=9))
    (out / "site_a" / "2024" / ".p2.npy.part").write_bytes(b"\x93NUMPY half")
    kept = {p: p.stat().st_mtime_ns for p in (out / "site_b").glob("*.npy")}

    second = convert_folder(inp, out, tiny_reconstructor, output_format="both")
    assert set(second.written) == {"top", "site_a/2024/p1", "site_a/2024/p2"}
    assert len(second.done) == 2 and set(second.failed) == {"site_b/short"}
    assert {p: p.stat().st_mtime_ns for p in (out / "site_b").glob("*.npy")} == kept
    assert (out / "site_a" / "2024" / "p1.dcm").exists() and not list(out.rglob(".*.part"))

    # Other settings (here: --confidence) are not "done": everything is converted again.
    third = convert_folder(inp, out, tiny_reconstructor, output_format="both", confidence=True)
    assert len(third.written) == 5 and not third.done
    settings = ConvertSettings(output_format="both", confidence=True).marker_settings(tiny_reconstructor)
    assert all(is_done(item, settings) for item in find_inputs(inp, out) if item.name != "site_b/short")


def test_summary_line_counts_each_kind(shared_data, tiny_checkpoint, tmp_path, capsys):
    inp = make_tree(tmp_path, shared_data)
    args = ["convert", str(inp), str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint)]
    assert main(args) == 1
    assert "converted 5, rejected 1, skipped as done 0" in capsys.readouterr().err
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "converted 0, rejected 1, skipped as done 5" in err and "ECG/s" in err


def test_a_record_that_breaks_the_model_fails_alone(tiny_reconstructor, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    for seed in range(4):
        np.save(inp / f"r{seed}.npy", synthetic_lead(seconds=10 + seed, seed=seed))
    real = tiny_reconstructor.reconstruct_batch

    def breaks_on_r2(leads, fs):
        if any(x.size == 13 * 500 for x in leads):
            raise RuntimeError("model blew up")
        return real(leads, fs)

    monkeypatch.setattr(tiny_reconstructor, "reconstruct_batch", breaks_on_r2)
    report = convert_folder(inp, tmp_path / "out", tiny_reconstructor)
    assert set(report.written) == {"r0", "r1", "r2"} and set(report.failed) == {"r3"}
    reason = (tmp_path / "out" / "r3.reason.txt").read_text()
    assert "reconstruction failed (RuntimeError: model blew up)" in reason


def test_reconstruct_calls_are_grouped_by_window_count(tiny_reconstructor, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    for seed in range(5):
        np.save(inp / f"r{seed}.npy", synthetic_lead(seconds=10, seed=seed))  # 3 windows each
    np.save(inp / "long.npy", synthetic_lead(seconds=60, seed=9))  # 23 windows: a call of its own
    items = find_inputs(inp, tmp_path / "out")
    calls = []
    real = tiny_reconstructor.reconstruct_batch
    monkeypatch.setattr(tiny_reconstructor, "reconstruct_batch",
                        lambda leads, fs, *rest: calls.append([x.size for x in leads]) or real(leads, fs, *rest))
    results = convert_batch(items, tiny_reconstructor, ConvertSettings(), max_windows=7)
    assert [r.status for r in results] == ["converted"] * 6
    windows = [[tiny_reconstructor.count_windows(n, 500.0) for n in call] for call in calls]
    assert all(sum(w) <= 7 or len(w) == 1 for w in windows) and [23] in windows
    for item in items:  # the same result as one call per record, to float rounding
        alone = tiny_reconstructor.reconstruct(np.load(item.source).astype(np.float64), 500.0)
        np.testing.assert_allclose(np.load(item.out_dir / f"{item.stem}.npy"), alone, atol=0.5)


def test_marker_records_what_was_written(shared_data, tiny_reconstructor, tmp_path):
    inp = make_tree(tmp_path, shared_data)
    out = tmp_path / "out"
    convert_folder(inp, out, tiny_reconstructor, output_format="both", confidence=True)
    record = json.loads((out / "site_a" / "2024" / ".p2.done.json").read_text())
    assert set(record["outputs"]) == {"p2.npy", "p2.dcm", "p2.json", "p2.confidence.json"}
    assert record["sidecar_sha256"] == hashlib.sha256(b'{"fs": 500}').hexdigest()
    assert record["settings"]["model_version"] == tiny_reconstructor.model_version


@pytest.mark.parametrize("damage", ["size", "missing", "settings"])
def test_is_done_refuses_a_damaged_result(tiny_reconstructor, tmp_path, damage):
    inp = tmp_path / "in"
    inp.mkdir()
    np.save(inp / "a.npy", synthetic_lead())
    out = tmp_path / "out"
    convert_folder(inp, out, tiny_reconstructor)
    (item,) = find_inputs(inp, out)
    settings = ConvertSettings().marker_settings(tiny_reconstructor)
    assert is_done(item, settings)
    if damage == "size":
        (out / "a.npy").write_bytes((out / "a.npy").read_bytes()[:1000])
    elif damage == "missing":
        (out / "a.npy").unlink()
    else:
        settings = {**settings, "units": "mV"}
    assert not is_done(item, settings)


def test_sidecars_are_matched_whatever_the_input_path_and_strays_are_named(shared_data, tiny_checkpoint,
                                                                           tmp_path, monkeypatch, capsys):
    make_tree(tmp_path, shared_data)  # site_a/2024/p2.npy has its sidecar p2.json
    (tmp_path / "in" / "site_b" / "orphan.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # a relative INPUT_DIR, as typed
    assert main(["convert", "in", "out", "--checkpoint", str(tiny_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "site_b/orphan.json: a sidecar with no orphan.npy beside it" in err
    assert "p2.json" not in err
