"""Training: WFDB loading of every real layout, record-wise split, the loss, and a short
`ecg-dicom train` run that is reproducible and writes a loadable checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PTBXL_SAMPLE

from ecg_dicom.cli import main
from ecg_dicom.core.checkpoint import load_checkpoint
from ecg_dicom.leads import LEADS_12
from ecg_dicom.training.data import (
    database_of,
    load_wfdb_records,
    ptbxl_ecg_id,
    read_wfdb_record,
    split_records,
    subject_of,
)
from ecg_dicom.training.train import reconstruction_loss


def test_reads_ptb_fifteen_signals_as_twelve_leads(shared_data: Path) -> None:
    rec = read_wfdb_record(shared_data / "ecg12/ptb/s0010_re.hea")
    assert rec.fs == 1000 and rec.leads.shape == (12, 38400)
    # stored exactly (gain 2000 adu/mV): Einthoven holds to well under a µV-scale rounding
    i, ii, iii = rec.leads[:3]
    assert np.sqrt(np.mean((iii - (ii - i)) ** 2)) < 5.0
    assert 300 < np.ptp(rec.leads[LEADS_12.index("V2")]) < 5000  # µV, not mV


def test_reads_ludb_lowercase_names_and_per_lead_gains(shared_data: Path) -> None:
    rec = read_wfdb_record(shared_data / "ecg12/ludb/1.hea")
    assert rec.database == "ludb" and rec.fs == 500 and rec.leads.shape == (12, 5000)
    i, ii, iii = rec.leads[:3] - np.median(rec.leads[:3], axis=1, keepdims=True)
    # per-lead gains applied: Einthoven residual is tens of µV, not a gain mismatch of 100s
    assert np.sqrt(np.mean((iii - (ii - i)) ** 2)) < 200.0
    assert all(100 < np.ptp(row) < 10000 for row in rec.leads)


def test_flags_amplitude_normalised_records(shared_data: Path) -> None:
    """LUDB stores every lead scaled to exactly 1 mV peak-to-peak: shapes only."""
    ludb = read_wfdb_record(shared_data / "ecg12/ludb/56.hea")
    assert not ludb.amplitude_reliable
    np.testing.assert_allclose(np.ptp(ludb.leads, axis=1), 1000.0, atol=2.0)
    assert read_wfdb_record(shared_data / "ecg12/georgia/E07500.hea").amplitude_reliable
    assert read_wfdb_record(shared_data / "ecg12/ptb/s0010_re.hea").amplitude_reliable


def test_shape_only_records_do_not_pull_amplitude() -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 7, 500) * 0.3
    pred = torch.cat([target[:1], target[1:] * 0.3])  # record 1 shrunk, same shape
    _, both = reconstruction_loss(pred, None, target, torch.tensor([1.0, 1.0]))
    _, first = reconstruction_loss(pred, None, target, torch.tensor([1.0, 0.0]))
    assert both["std"] > 0.5 and first["std"] == pytest.approx(0.0, abs=1e-6)
    assert first["mse"] == pytest.approx(0.0, abs=1e-9) and first["r"] == pytest.approx(1.0, abs=1e-5)


def test_reads_ptbxl_100hz_record(shared_data: Path) -> None:
    rec = read_wfdb_record(shared_data / "ecg12/ptbxl/00001_lr.hea")
    assert rec.fs == 100 and rec.leads.shape == (12, 1000)


def test_split_is_record_wise_disjoint_and_seeded() -> None:
    names = [f"db/{i}" for i in range(50)]
    train, val = split_records(names, 0.1, seed=3)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert split_records(names, 0.1, seed=3) == (train, val)
    assert split_records(names, 0.1, seed=4) != (train, val)


def test_loss_penalises_amplitude_collapse() -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 7, 500) * 0.3
    exact, _ = reconstruction_loss(target.clone(), None, target)
    shrunk, parts = reconstruction_loss(target * 0.5, None, target)
    assert parts["r"] == pytest.approx(1.0, abs=1e-5)  # r alone would not see it
    assert parts["std"] > 0.4 and shrunk > exact + 0.4


def _train(folder: Path, out: Path, seed: int = 0) -> Path:
    assert main(["train", "--out", str(out), "--real", str(folder), "--epochs", "1",
                 "--steps-per-epoch", "2", "--seed", str(seed)]) == 0
    return out


@pytest.fixture(scope="module")
def four_records(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real Georgia records (a database folder of their own) linked into a tmp folder."""
    folder = tmp_path_factory.mktemp("real") / "georgia"
    folder.mkdir()
    for stem in ("E07500", "E07501", "E07502", "E07503"):
        for ext in (".hea", ".mat"):
            (folder / f"{stem}{ext}").symlink_to(shared_data / "ecg12/georgia" / f"{stem}{ext}")
    return folder


def test_train_writes_loadable_reproducible_checkpoint(four_records: Path, tmp_path: Path) -> None:
    a = load_checkpoint(_train(four_records, tmp_path / "a.pt"), "I")
    b = load_checkpoint(_train(four_records, tmp_path / "b.pt"), "I")
    c = load_checkpoint(_train(four_records, tmp_path / "c.pt", seed=1), "I")
    sa, sb, sc = (x.model.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.model_version == b.model_version
    t = a.training
    assert t["seed"] == 0 and t["epochs"] == 1 and t["command"].startswith("ecg-dicom train")
    assert set(t["baselines"]) == {"linear_zero_lag", "linear_lagged"}
    assert len(t["data"]["train_records"]) == 4 and t["data"]["databases"] == {"georgia": 4}


def test_train_without_data_fails_cleanly(tmp_path: Path) -> None:
    assert main(["train", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_exclude_db_holds_a_database_out(shared_data: Path, ptbxl_tree: Path) -> None:
    records = load_wfdb_records([ptbxl_tree, shared_data / "ecg12/ptb"], exclude_db=["ptb"])
    assert len(records) == len(PTBXL_SAMPLE) and {r.database for r in records} == {"ptbxl"}
    assert load_wfdb_records([ptbxl_tree.parent], exclude_db=["ptbxl"]) == []


def test_databases_are_named_by_their_folder_not_by_ptbxl_buckets(shared_data: Path, ptbxl_tree: Path) -> None:
    """PTB-XL's records500/00000/... layout and both header styles read as one database."""
    for header in ("records500/00000/00002_hr.hea", "records100/01000/01001_lr.hea", "HR06000.hea"):
        assert database_of(ptbxl_tree / header) == "ptbxl"
    assert database_of(shared_data / "ecg12/ludb/1.hea") == "ludb"
    by_name = {r.name: r for r in load_wfdb_records([ptbxl_tree])}
    assert set(by_name) == {f"ptbxl/{Path(p).name}" for p in PTBXL_SAMPLE}
    assert by_name["ptbxl/00002_hr"].fs == 500 and by_name["ptbxl/00501_lr"].fs == 100
    # the Challenge 2024 rewrite (lower-case lead names, dated header) reads all 12 leads
    assert np.all(np.ptp(by_name["ptbxl/01017_hr"].leads, axis=1) > 0)


def test_subjects_come_from_metadata_and_the_data_readme(shared_data: Path, ptbxl_tree: Path) -> None:
    """Patient-grouped splits need one subject id for all records of one person."""
    by_name = {r.name: r for r in load_wfdb_records([ptbxl_tree])}
    assert by_name["ptbxl/00002_hr"].patient == "ptbxl/patient13243"   # from ptbxl_database_ids_1-500.csv
    assert by_name["ptbxl/01001_lr"].patient == "ptbxl/ecg1001"        # no metadata past ecg_id 500
    assert by_name["ptbxl/HR06000"].patient == "ptbxl/ecg6000"
    assert ptbxl_ecg_id("00501_lr") == 501 and ptbxl_ecg_id("E07500") is None
    ptb = {r.name: r.patient for r in load_wfdb_records([shared_data / "ecg12/ptb"])}
    assert ptb["ptb/S0006"] == ptb["ptb/S0007"] != ptb["ptb/S0008"] == ptb["ptb/S0010"]
    assert subject_of(shared_data / "ecg12/georgia/E00009.hea", "georgia") == "georgia/E00008"
    assert subject_of(shared_data / "ecg12/georgia/E07500.hea", "georgia") == "georgia/E07500"


def test_fine_tuning_starts_from_init_and_records_it(four_records: Path, tmp_path: Path) -> None:
    base = _train(four_records, tmp_path / "base.pt")
    out = tmp_path / "ft.pt"
    assert main(["train", "--out", str(out), "--real", str(four_records), "--epochs", "1",
                 "--steps-per-epoch", "1", "--init", str(base)]) == 0
    ft, start = load_checkpoint(out, "I"), load_checkpoint(base, "I")
    assert ft.training["pretraining"]["model_version"] == start.model_version
    assert ft.training["data"]["init"] == str(base)
    # one small step away from the initial weights, not a fresh random model
    diffs = [float((ft.model.state_dict()[k] - v).abs().max()) for k, v in start.model.state_dict().items()]
    assert 0 < max(diffs) < 0.05


def test_fine_tuning_refuses_an_ensemble_or_a_bad_init(four_records: Path, tmp_path: Path, capsys) -> None:
    base = _train(four_records, tmp_path / "base.pt")
    ensemble = tmp_path / "ens.pt"
    assert main(["ensemble", str(base), str(base), "--out", str(ensemble)]) == 0
    for init, reason in ((ensemble, "is an ensemble"), (tmp_path / "missing.pt", "does not exist")):
        assert main(["train", "--out", str(tmp_path / "ft.pt"), "--real", str(four_records), "--epochs", "1",
                     "--steps-per-epoch", "1", "--init", str(init)]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "ft.pt").exists()


def test_members_trained_with_other_seeds_hold_out_the_same_records(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "georgia"
    folder.mkdir()
    for path in sorted((shared_data / "ecg12/georgia").glob("*.hea"))[:12]:
        for ext in (".hea", ".mat"):
            (folder / f"{path.stem}{ext}").symlink_to(path.with_suffix(ext))

    def validation_records(*extra: str) -> list[str]:
        out = tmp_path / "m.pt"
        assert main(["train", "--out", str(out), "--real", str(folder), "--epochs", "1",
                     "--steps-per-epoch", "1", *extra]) == 0
        return load_checkpoint(out, "I").training["held_out"]["validation_records"]

    base = validation_records("--seed", "0")
    assert len(base) == 1
    assert validation_records("--seed", "1") == base
    assert validation_records("--seed", "1", "--split-seed", "1") != base


def test_model_size_flags_shape_the_model_and_bad_sizes_fail_first(four_records: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "small.pt"
    assert main(["train", "--out", str(out), "--real", str(four_records), "--epochs", "1", "--steps-per-epoch", "1",
                 "--stem-channels", "8", "--hidden", "8", "--lstm-layers", "1", "--heads", "2", "--stride", "10"]) == 0
    config = load_checkpoint(out, "I").model.config
    assert (config.stem_channels, config.hidden, config.lstm_layers, config.heads, config.stride) == (8, 8, 1, 2, 10)
    for flags, reason in ((["--heads", "3"], "not divisible by 3 heads"),
                          (["--stride", "7"], "does not divide the 1250-sample window"),
                          (["--hidden", "0"], "model size")):
        assert main(["train", "--out", str(tmp_path / "bad.pt"), "--real", "/nonexistent", *flags]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()
