"""Training: WFDB loading of every real layout, record-wise split, the loss, and a short
`ecg-dicom train` run that is reproducible and writes a loadable checkpoint."""

from __future__ import annotations

import json
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
    diagnostic_classes,
    in_patient_fold,
    load_wfdb_records,
    parse_patient_fold,
    ptbxl_ecg_id,
    read_wfdb_record,
    split_records,
    subject_of,
)
from ecg_dicom.training.train import (
    Augment,
    Prepared,
    TrainConfig,
    augment_input,
    band_limit_kernel,
    reconstruction_loss,
    sampling_weights,
)


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


def test_diagnostic_classes_from_every_label_source(shared_data: Path, ptbxl_tree: Path) -> None:
    """PTB-XL scp_codes and Challenge 2024 labels, SNOMED codes (Georgia, PTB), LUDB's text."""
    by_name = {r.name: r for r in load_wfdb_records([ptbxl_tree])}
    assert by_name["ptbxl/00002_hr"].labels == ("NORM",)                    # scp_codes {'NORM': 80, 'SBRAD': 0}
    assert by_name["ptbxl/01017_hr"].labels == ("PVC/PAC", "STTC")          # # Labels: STTC, CD, PVC, AFIB/AFL
    assert by_name["ptbxl/01001_lr"].labels == ()                           # original header, no metadata
    assert read_wfdb_record(shared_data / "ecg12/georgia/E07509.hea").labels == ("BBB/IVCD",)  # RBBB 59118001
    assert read_wfdb_record(shared_data / "ecg12/georgia/E07506.hea").labels == ("NORM",)      # sinus rhythm only
    assert read_wfdb_record(shared_data / "ecg12/ptb/S0006.hea").labels == ("MI",)
    assert read_wfdb_record(shared_data / "ecg12/ptb/s0010_re.hea").labels == ("MI",)  # Reason for admission
    assert read_wfdb_record(shared_data / "ecg12/ludb/1.hea").labels == ("LVH", "STTC")
    assert diagnostic_classes(["#Incomplete right bundle branch block. "], "ludb") == ()
    assert diagnostic_classes(["#Rhythm: Sinus rhythm.", "#Electric axis of the heart: normal. "], "ludb") == ("NORM",)
    assert diagnostic_classes([], "ptbxl", ("IMI", "CLBBB", "NDT", "LVH")) == ("BBB/IVCD", "LVH", "MI", "STTC")


def test_patient_folds_partition_subjects_the_same_way_everywhere(shared_data: Path) -> None:
    records = load_wfdb_records([shared_data / "ecg12/ptb", shared_data / "ecg12/georgia"])
    folds = [[r.name for r in records if in_patient_fold(r, [("georgia", k, 3), ("ptb", k, 3)])] for k in range(3)]
    assert sorted(sum(folds, [])) == sorted(r.name for r in records)       # a partition
    for group in (("ptb/S0006", "ptb/S0007"), ("ptb/S0008", "ptb/S0009", "ptb/S0010"),
                  ("georgia/E00008", "georgia/E00009", "georgia/E00010")):
        assert sum(all(name in fold for name in group) for fold in folds) == 1   # one subject, one fold
    assert not any(in_patient_fold(r, [("ludb", 0, 2), ("ludb", 1, 2)]) for r in records)
    assert parse_patient_fold("ptbxl:2/5") == ("ptbxl", 2, 5)
    for bad in ("ptbxl", "ptbxl:5/5", "ptbxl:0/1", ":0/5", "ptbxl:a/5"):
        with pytest.raises(ValueError, match="DATABASE:K/N"):
            parse_patient_fold(bad)


def test_validation_split_keeps_each_subject_on_one_side() -> None:
    names = [f"db/{i}" for i in range(60)]
    groups = {n: f"subject{i // 3}" for i, n in enumerate(names)}      # 20 subjects with 3 records each
    train, val = split_records(names, 0.1, seed=0, groups=groups)
    assert len(val) == 6 and not set(train) & set(val)
    assert {groups[n] for n in val}.isdisjoint({groups[n] for n in train})


def test_band_limited_records_are_compared_below_their_band() -> None:
    """A 100 Hz record holds nothing above 50 Hz: detail the model adds there costs nothing."""
    fs = 250.0
    t = torch.arange(2500) / fs
    target = (torch.sin(2 * torch.pi * 1.3 * t) * 0.5).expand(2, 7, -1).clone()
    pred = target + 0.2 * torch.sin(2 * torch.pi * 80 * t)               # QRS-like detail at 80 Hz
    kernel = band_limit_kernel(fs)
    limited, parts_limited = reconstruction_loss(pred, None, target, band=torch.ones(2), band_kernel=kernel)
    full, parts_full = reconstruction_loss(pred, None, target, band=torch.zeros(2), band_kernel=kernel)
    assert parts_limited["mse"] < 1e-3 < parts_full["mse"] and limited < full
    assert parts_limited["r"] > 0.999 > parts_full["r"]


def test_sampling_weights_give_each_pool_its_share() -> None:
    recs = ([Prepared("hr", np.zeros(1), np.zeros((7, 1)))] * 10
            + [Prepared("lr", np.zeros(1), np.zeros((7, 1)), band_limited=True)] * 30
            + [Prepared("ludb", np.zeros(1), np.zeros((7, 1)), amplitude_reliable=False)] * 5)
    w = sampling_weights(recs, 20, TrainConfig(real_fraction=0.8, shape_share=0.25, lowrate_weight=0.5))
    assert w.sum() == pytest.approx(1.0)
    assert w[40:45].sum() == pytest.approx(0.8 * 0.25) and w[45:].sum() == pytest.approx(0.2)
    assert w[10] == pytest.approx(0.5 * w[0])                                # a 100 Hz record weighs half
    assert w[:40].sum() == pytest.approx(0.8 * 0.75)


def test_cart_augmentation_clips_bursts_and_pops() -> None:
    rng = np.random.default_rng(0)
    x = np.sin(np.linspace(0, 60, 2500)) * 1000.0
    only = dict(p_low_fs=0, p_wander=0, p_powerline=0, p_emg=0, offset_uv=0.0)
    clipped = augment_input(x, 250.0, rng, Augment(**only, p_clip=1.0, p_burst=0, p_pop=0))
    assert clipped.max() < 0.96 * x.max() and np.array_equal(clipped[np.abs(x) < 400], x[np.abs(x) < 400])
    burst = augment_input(x, 250.0, rng, Augment(**only, p_clip=0, p_burst=1.0, p_pop=0))
    changed = np.flatnonzero(burst != x)
    assert 0.2 * 250 <= changed.size <= 2.0 * 250 + 1
    popped = augment_input(x, 250.0, rng, Augment(**only, p_clip=0, p_burst=0, p_pop=1.0))
    assert np.array_equal(popped[:np.flatnonzero(popped != x)[0]], x[:np.flatnonzero(popped != x)[0]])


def test_train_with_a_cheap_model_long_windows_and_a_patient_fold(shared_data: Path, ptbxl_tree: Path,
                                                                  tmp_path: Path) -> None:
    """The options of the current recipe: 10 s windows, input high-pass, narrow full-rate convs,
    a held-out patient fold that evaluate then selects."""
    out = tmp_path / "m.pt"
    assert main(["train", "--out", str(out), "--real", str(ptbxl_tree), "--epochs", "1", "--steps-per-epoch", "1",
                 "--window-s", "10", "--input-highpass", "0.5", "--stem-channels", "8", "--down-channels", "16",
                 "--head-channels", "8", "--hidden", "8", "--heads", "2", "--stride", "10",
                 "--patient-fold", "ptbxl:0/2", "--select", "last"]) == 0
    ckpt = load_checkpoint(out, "I")
    assert (ckpt.preprocessing.window, ckpt.preprocessing.hop, ckpt.preprocessing.highpass_hz) == (2500, 1250, 0.5)
    assert ckpt.model.config.lstm_input == 16 and ckpt.model.config.head_width == 8
    held = ckpt.training["held_out"]
    records = load_wfdb_records([ptbxl_tree])
    in_fold = sorted(r.name for r in records if in_patient_fold(r, [("ptbxl", 0, 2)]))
    assert held["patient_folds"] == ["ptbxl:0/2"] and held["patient_fold_records"] == len(in_fold)
    assert not set(in_fold) & set(ckpt.training["data"]["train_records"])
    assert ckpt.training["flops_per_window"] == ckpt.model.flops(2500)
    report = tmp_path / "e.json"
    assert main(["evaluate", str(ptbxl_tree), "--checkpoint", str(out), "--patient-fold", "ptbxl:0/2",
                 "--json", str(report)]) == 0
    assert sorted(r["name"] for r in json.loads(report.read_text())["records"]) == in_fold
