"""Writing 12-lead ECG objects: dciodvfy-valid, dcmdump-readable, read back equal, idempotent."""

from __future__ import annotations

import logging
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import synthetic_lead

from ecg_dicom.core.preprocess import resample_fs
from ecg_dicom.dicom.codes import SCPECG_CODES, TWELVE_LEAD_ECG_STORAGE
from ecg_dicom.dicom.reader import read_dicom_lead
from ecg_dicom.dicom.writer import (
    MAX_SAMPLES,
    build_ecg_datasets,
    channel_sensitivity,
    write_ecg_dicom,
)
from ecg_dicom.leads import CHEST_LEADS, LEADS_12, assemble_12_leads

MORTARA = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"
TOOLKIT = "dicom/12lead/ecgtoolkit_example_eli250.dcm"
GE_HEMO = "dicom/hemodynamic/ge_maclab_12lead_in_hemodynamic_sop.dcm"
HASH = "ab" * 32
VERSION = "tiny-test-0"


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's message lines for ``path``; the test fails if dciodvfy is missing."""
    assert shutil.which("dciodvfy"), "dciodvfy (Debian package dicom3tools) is required"
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    # The IOD's name is one line (its place among the warnings varies).
    assert "TwelveLeadECG" in [line.strip() for line in lines], lines
    return lines


def assert_valid(path: Path) -> None:
    """No dciodvfy line starts with Error or Abort (its exit status is unreliable); dcmdump reads it."""
    errors = [line for line in dciodvfy(path) if line.startswith(("Error", "Abort"))]
    assert not errors, errors
    assert shutil.which("dcmdump"), "dcmdump (Debian package dcmtk) is required"
    dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "TwelveLeadECGWaveformStorage" in dump.stdout and "E:" not in dump.stderr


def assert_consistent_entities(*paths: Path) -> None:
    """dcentvfy: patient, study and series attributes agree across the files (no Error line)."""
    assert shutil.which("dcentvfy"), "dcentvfy (Debian package dicom3tools) is required"
    done = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("Error", "Abort"))]
    assert not errors, errors


def read_back(paths: list[Path]) -> np.ndarray:
    """All 12 leads of the written object(s), read with our reader, joined in time: (12, N) µV."""
    return np.concatenate(
        [np.stack([read_dicom_lead(p, lead).signal_uv for lead in LEADS_12]) for p in paths], axis=1)


def real_12_leads(path: Path) -> tuple[np.ndarray, float, pydicom.Dataset]:
    """(12, N) µV with exact limb identities, built from a real file's I, II and V1–V6."""
    got = {lead: read_dicom_lead(path, lead) for lead in ("I", "II", *CHEST_LEADS)}
    chest = np.stack([got[lead].signal_uv for lead in CHEST_LEADS])
    leads = assemble_12_leads(got["I"].signal_uv, got["II"].signal_uv, chest).astype(np.float64)
    return leads, got["I"].fs, got["I"].dataset


def synthetic_12_leads(n: int, fs: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lead_i = synthetic_lead(n / fs, fs, seed)
    lead_ii = 1.3 * lead_i + rng.normal(0, 20, n)
    chest = np.stack([(k - 2.5) * 0.6 * lead_i + rng.normal(0, 30, n) for k in range(6)])
    return assemble_12_leads(lead_i, lead_ii, chest).astype(np.float64)


def assert_limb_identities(leads: np.ndarray, tol_uv: float) -> None:
    i, ii, iii, avr, avl, avf = leads[:6]
    for residual in (iii - (ii - i), avr + (i + ii) / 2, avl - (i - ii / 2), avf - (ii - i / 2)):
        assert np.max(np.abs(residual)) <= tol_uv


@pytest.mark.parametrize("name", [MORTARA, TOOLKIT, GE_HEMO])
def test_write_from_real_source_is_valid_and_reads_back(shared_data: Path, tmp_path: Path, name: str) -> None:
    leads, fs, source = real_12_leads(shared_data / name)
    paths = write_ecg_dicom(tmp_path, "out", leads, fs, VERSION, "I", source, HASH)
    assert paths == [tmp_path / "out.dcm"]
    assert_valid(paths[0])
    assert_consistent_entities(paths[0], shared_data / name)  # joins the source's study cleanly
    back = read_back(paths)
    # 1 µV steps: each sample within half a step; the identities within three half steps.
    assert np.max(np.abs(back - leads)) <= 0.5 + 1e-9
    assert_limb_identities(back, 1.5 + 1e-9)
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == TWELVE_LEAD_ECG_STORAGE and ds.Modality == "ECG"
    assert float(ds.WaveformSequence[0].SamplingFrequency) == fs


def test_structure_and_provenance(shared_data: Path, tmp_path: Path) -> None:
    leads, fs, source = real_12_leads(shared_data / MORTARA)
    ds = pydicom.dcmread(write_ecg_dicom(tmp_path, "x", leads, fs, VERSION, "I", source, HASH)[0])
    # Same patient and study, new series and instance.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "AccessionNumber"):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert "AI-reconstructed" in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.SeriesDescription
    # Only the attributes we mean to keep: nothing else of the cart's comes along.
    for keyword in ("InstitutionName", "Laterality", "OperatorsName", "PatientAddress"):
        assert keyword in source and keyword not in ds, keyword
    # Group 1: the acquired input lead; group 2: the 11 reconstructed leads.
    input_group, derived_group = ds.WaveformSequence
    assert input_group.WaveformOriginality == "ORIGINAL" and derived_group.WaveformOriginality == "DERIVED"
    assert "MultiplexGroupTimeOffset" not in input_group and "MultiplexGroupTimeOffset" not in derived_group
    codes = [[c.ChannelSourceSequence[0].CodeValue for c in g.ChannelDefinitionSequence]
             for g in ds.WaveformSequence]
    assert codes == [[SCPECG_CODES["I"]], [SCPECG_CODES[lead] for lead in LEADS_12[1:]]]
    for group in ds.WaveformSequence:
        assert group.WaveformSampleInterpretation == "SS" and group.WaveformBitsAllocated == 16
        for channel in group.ChannelDefinitionSequence:
            assert channel.ChannelSourceSequence[0].CodingSchemeVersion == "1.3"
            unit = channel.ChannelSensitivityUnitsSequence[0]
            assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("uV", "UCUM")
    assert all("ChannelDerivationDescription" in c for c in derived_group.ChannelDefinitionSequence)
    # Links to the source and the model.
    reference = ds.ReferencedInstanceSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    equipment = ds.ContributingEquipmentSequence[0]
    assert VERSION in equipment.SoftwareVersions
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    texts = [a.UnformattedTextValue for a in ds.WaveformAnnotationSequence]
    assert any(VERSION in t and "NOT FOR DIAGNOSIS" in t for t in texts)
    assert [list(a.ReferencedWaveformChannels) for a in ds.WaveformAnnotationSequence] == [[1, 0], [2, 0]]


def test_invalid_source_study_uid_is_replaced_and_logged(shared_data: Path, caplog) -> None:
    leads, fs, source = real_12_leads(shared_data / TOOLKIT)
    assert not pydicom.uid.UID(source.StudyInstanceUID).is_valid
    with caplog.at_level(logging.WARNING, logger="ecg_dicom.dicom.writer"):
        first = build_ecg_datasets(leads, fs, VERSION, "I", source, HASH)[0]
    assert "Study Instance UID" in caplog.text and "replacement study" in caplog.text
    again = build_ecg_datasets(leads, fs, "another-model", "II", source, HASH)[0]
    assert pydicom.uid.UID(first.StudyInstanceUID).is_valid
    # Every result from that source study lands in one replacement study.
    assert first.StudyInstanceUID == again.StudyInstanceUID != source.StudyInstanceUID
    # Its SOP Instance UID is invalid too: not referenced, named in the annotation instead.
    assert "ReferencedInstanceSequence" not in first
    assert any(source.SOPInstanceUID in a.UnformattedTextValue for a in first.WaveformAnnotationSequence)
    assert first.PatientID == source.PatientID


def test_npy_input_without_a_sidecar_gets_an_unknown_patient_and_a_new_study(tmp_path: Path) -> None:
    leads = synthetic_12_leads(5000, 500.0)
    path = write_ecg_dicom(tmp_path, "from_npy", leads, 500.0, VERSION, "I", None, HASH)[0]
    assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.PatientName == "UNKNOWN" and ds.PatientID.startswith("UNKNOWN-") and ds.PatientBirthDate == ""
    assert "ReferencedInstanceSequence" not in ds
    other = build_ecg_datasets(leads, 500.0, "v2", "I", None, HASH, now=datetime(2001, 2, 3, 4, 5, 6))[0]
    different = build_ecg_datasets(leads, 500.0, VERSION, "I", None, "cd" * 32)[0]
    # The study follows the input file, whatever model converts it and whenever.
    study = ("StudyInstanceUID", "StudyID", "StudyDate", "StudyTime")
    assert [ds[k].value for k in study] == [other[k].value for k in study]
    assert ds.StudyInstanceUID != different.StudyInstanceUID and ds.StudyID == HASH[:16]
    assert other.AcquisitionDateTime.startswith("20010203040506")  # unknown: the conversion time
    assert np.max(np.abs(read_back([path]) - leads)) <= 0.5 + 1e-9


def test_replay_gives_the_same_uids(shared_data: Path, tmp_path: Path) -> None:
    leads, fs, source = real_12_leads(shared_data / GE_HEMO)

    def uids(ds: pydicom.Dataset) -> tuple[str, str, str]:
        return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    first = write_ecg_dicom(tmp_path / "a", "r", leads, fs, VERSION, "I", source, HASH)
    second = write_ecg_dicom(tmp_path / "b", "r", leads, fs, VERSION, "I", source, HASH)
    assert uids(pydicom.dcmread(first[0])) == uids(pydicom.dcmread(second[0]))
    # the same source SOP Instance UID with other content (a cart reusing UIDs): other output UIDs
    reused = build_ecg_datasets(leads, fs, VERSION, "I", source, "other-content")[0]
    assert reused.StudyInstanceUID == source.StudyInstanceUID
    assert reused.SOPInstanceUID != uids(pydicom.dcmread(first[0]))[2]
    assert pydicom.dcmread(first[0]).file_meta.MediaStorageSOPInstanceUID == pydicom.dcmread(first[0]).SOPInstanceUID
    # A new model version or input lead is a new result: new series and instance.
    for version, lead in (("tiny-test-1", "I"), (VERSION, "II")):
        other = build_ecg_datasets(leads, fs, version, lead, source, HASH)[0]
        assert other.StudyInstanceUID == source.StudyInstanceUID
        assert other.SeriesInstanceUID != uids(pydicom.dcmread(first[0]))[1]
        assert other.SOPInstanceUID != uids(pydicom.dcmread(first[0]))[2]
    # The same .npy content twice: same UIDs.
    npy_leads = synthetic_12_leads(3000, 500.0)
    a = build_ecg_datasets(npy_leads, 500.0, VERSION, "I", None, HASH)[0]
    b = build_ecg_datasets(npy_leads, 500.0, VERSION, "I", None, HASH)[0]
    assert uids(a) == uids(b)


@pytest.mark.parametrize("n, parts", [(MAX_SAMPLES, 1), (MAX_SAMPLES + 1, 2), (40_000, 3)])
def test_long_records_are_split_into_12_lead_objects(tmp_path: Path, n: int, parts: int) -> None:
    fs = 1000.0
    leads = synthetic_12_leads(n, fs)
    paths = write_ecg_dicom(tmp_path, "long", leads, fs, VERSION, "II", None, HASH)
    assert len(paths) == parts
    if parts > 1:
        assert paths == [tmp_path / f"long_{k:03d}.dcm" for k in range(1, parts + 1)]
    datasets = [pydicom.dcmread(p) for p in paths]
    lengths = [ds.WaveformSequence[0].NumberOfWaveformSamples for ds in datasets]
    assert max(lengths) <= MAX_SAMPLES and sum(lengths) == n
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, parts + 1))
    assert len({ds.SOPInstanceUID for ds in datasets}) == parts
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert_valid(paths[-1])
    assert_consistent_entities(*paths)
    np.testing.assert_array_less(np.abs(read_back(paths) - leads), 0.5 + 1e-9)


@pytest.mark.parametrize("fs_in, fs_out", [(100.0, 200.0), (2000.0, 1000.0), (240.0, 240.0), (1000.0, 1000.0)])
def test_sampling_frequency_is_brought_into_200_1000_hz(tmp_path: Path, fs_in: float, fs_out: float) -> None:
    leads = synthetic_12_leads(int(10 * fs_in), fs_in)
    paths = write_ecg_dicom(tmp_path, "fs", leads, fs_in, VERSION, "I", None, HASH)
    assert len(paths) == 1
    assert_valid(paths[0])
    ds = pydicom.dcmread(paths[0])
    assert all(float(g.SamplingFrequency) == fs_out for g in ds.WaveformSequence)
    expected = resample_fs(leads, fs_in, fs_out)
    assert expected.shape[1] == round(10 * fs_out)
    back = read_back(paths)
    assert np.max(np.abs(back - expected)) <= 0.5 + 1e-9
    assert_limb_identities(back, 1.5 + 1e-9)
    resampled = fs_in != fs_out
    assert ds.WaveformSequence[0].WaveformOriginality == ("DERIVED" if resampled else "ORIGINAL")
    description = ds.WaveformSequence[0].ChannelDefinitionSequence[0].get("ChannelDerivationDescription")
    assert (description == f"Resampled from {fs_in:g} Hz (linear interpolation)") if resampled else description is None


@pytest.mark.parametrize("peak_uv, sensitivity", [
    (0.0, 1.0), (32_767.0, 1.0), (32_768.0, 2.0), (65_534.0, 2.0), (65_535.0, 2.5),
    (100_000.0, 5.0), (200_000.0, 10.0), (1e9, 50_000.0),
])
def test_channel_sensitivity_fits_int16(peak_uv: float, sensitivity: float) -> None:
    got = channel_sensitivity(np.array([0.0, -peak_uv, peak_uv / 2]))
    assert got == pytest.approx(sensitivity)
    assert peak_uv / got <= 32_767


def test_large_channel_is_not_clipped(tmp_path: Path) -> None:
    leads = synthetic_12_leads(5000, 500.0)
    leads[LEADS_12.index("V2")] *= 80  # ~100 mV peak: outside int16 at 1 µV per step
    path = write_ecg_dicom(tmp_path, "big", leads, 500.0, VERSION, "I", None, HASH)[0]
    assert_valid(path)
    channel = pydicom.dcmread(path).WaveformSequence[1].ChannelDefinitionSequence[LEADS_12.index("V2") - 1]
    sensitivity = float(channel.ChannelSensitivity)
    assert sensitivity > 1
    back = read_dicom_lead(path, "V2").signal_uv
    assert np.max(np.abs(back - leads[LEADS_12.index("V2")])) <= sensitivity / 2 + 1e-9


def test_writes_are_atomic_and_stay_in_the_folder(tmp_path: Path) -> None:
    leads = synthetic_12_leads(2500, 500.0)
    paths = write_ecg_dicom(tmp_path / "out", "../../escape", leads, 500.0, VERSION, "I", None, HASH)
    assert [p.parent for p in paths] == [tmp_path / "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [paths[0].name]  # no .part left


@pytest.mark.parametrize("leads, message", [
    (np.zeros((11, 1000)), r"must be \(12, N\)"),
    (np.full((12, 1000), np.nan), "NaN or infinite"),
])
def test_bad_arrays_are_refused(leads: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_ecg_datasets(leads, 500.0, VERSION, "I", None, HASH)


def test_bad_arguments_are_refused() -> None:
    leads = synthetic_12_leads(1000, 500.0)
    with pytest.raises(ValueError, match="input lead 'V1' is not one of"):
        build_ecg_datasets(leads, 500.0, VERSION, "V1", None, HASH)
    with pytest.raises(ValueError, match="positive number"):
        build_ecg_datasets(leads, 0.0, VERSION, "I", None, HASH)
    with pytest.raises(ValueError, match="content hash"):
        build_ecg_datasets(leads, 500.0, VERSION, "I", None, None)


def test_reconstructor_output_round_trips(tiny_reconstructor, shared_data: Path, tmp_path: Path) -> None:
    lead = read_dicom_lead(shared_data / TOOLKIT, "I")
    leads = tiny_reconstructor.reconstruct(lead.signal_uv, lead.fs)
    paths = write_ecg_dicom(tmp_path, "recon", leads, lead.fs, tiny_reconstructor.model_version,
                            "I", lead.dataset, HASH)
    assert_valid(paths[0])
    back = read_back(paths)
    np.testing.assert_allclose(back[0], lead.signal_uv, atol=0.5)  # the input lead, kept
    assert np.max(np.abs(back - leads)) <= 0.5 + 1e-4


def test_an_invalid_uid_source_is_still_linked_in_the_original_attributes(shared_data: Path, tmp_path: Path) -> None:
    """Issue 11 item 9: the ECG Toolkit file's UIDs (`...091000.`, `...091000..1`) cannot be
    written as UIDs; the result keeps them, as received, where DICOM keeps values that do not
    conform to their VR, and stays dciodvfy-clean."""
    leads, fs, source = real_12_leads(shared_data / TOOLKIT)
    path = write_ecg_dicom(tmp_path, "toolkit", leads, fs, VERSION, "I", source, HASH)[0]
    assert_valid(path)
    ds = pydicom.dcmread(path)
    kept = {}
    for item in ds.OriginalAttributesSequence:
        assert item.ReasonForTheAttributeModification == "CORRECT" and item.ModifyingSystem == "ecg-dicom"
        [nonconforming] = item.NonconformingModifiedAttributesSequence
        pointer = nonconforming.get("SelectorSequencePointer")
        key = (pydicom.datadict.keyword_for_tag(pointer) if pointer is not None else None,
               pydicom.datadict.keyword_for_tag(nonconforming.SelectorAttribute))
        kept[key] = nonconforming.NonconformingDataElementValue.rstrip(b"\0").decode()
    assert kept == {(None, "StudyInstanceUID"): str(source.StudyInstanceUID),
                    ("ReferencedInstanceSequence", "ReferencedSOPInstanceUID"): str(source.SOPInstanceUID)}
    valid = write_ecg_dicom(tmp_path, "mortara", *real_12_leads(shared_data / MORTARA)[:2], VERSION, "I",
                            real_12_leads(shared_data / MORTARA)[2], HASH)[0]
    assert "OriginalAttributesSequence" not in pydicom.dcmread(valid)      # nothing replaced: nothing kept
