"""The .npy sidecar: one reader for both doors, DICOM keywords validated, no value in a reason."""

from __future__ import annotations

import json

import pytest

from ecg_dicom.errors import InputError
from ecg_dicom.sidecar import parse_sidecar, read_sidecar, sidecar_path

PATIENT = {"PatientID": "MRN-0042", "PatientName": "Müller^Hans", "PatientBirthDate": "19700101",
           "PatientSex": "M", "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.1", "AccessionNumber": "A1234",
           "StudyDate": "20240501", "StudyTime": "101500", "AcquisitionDateTime": "20240501101502",
           "InstitutionName": "General Hospital", "Manufacturer": "AliveCor",
           "ManufacturerModelName": "KardiaMobile", "DeviceSerialNumber": "SN1"}


def test_a_full_sidecar_is_read(tmp_path):
    path = tmp_path / "rec.json"
    path.write_text(json.dumps({"fs": 300, "lead": "lead i", "units": "mV", **PATIENT}), encoding="utf-8")
    sidecar = read_sidecar(path)
    assert (sidecar.fs, sidecar.lead, sidecar.units) == (300.0, "I", "mV")
    assert dict(sidecar.attributes) == PATIENT and sidecar.patient_known


def test_where_a_sidecar_is(tmp_path):
    assert sidecar_path(tmp_path / "x.y.npy") == tmp_path / "x.y.json"
    assert sidecar_path(tmp_path / "rec.NPY") == tmp_path / "rec.json"
    assert sidecar_path(tmp_path / "rec.dcm") is None        # DICOM carries its own
    assert read_sidecar(tmp_path / "absent.json") is None and read_sidecar(None) is None


@pytest.mark.parametrize("params, reason", [
    ({"PatientBirthDate": "1970-01-01", "PatientID": "X"}, "PatientBirthDate is not a valid DA value (YYYYMMDD)"),
    ({"StudyDate": "20240230", "PatientID": "X"}, "StudyDate is not a valid DA value"),
    ({"StudyTime": "256161", "PatientID": "X"}, "StudyTime is not a valid TM value"),
    ({"StudyInstanceUID": "1.2..3", "PatientID": "X"}, "StudyInstanceUID is not a valid UI value (a UID"),
    ({"PatientSex": "male", "PatientID": "X"}, "PatientSex"),
    ({"PatientName": "Doe^Jane"}, "gives PatientName but no PatientID"),
    ({"StudyInstanceUID": "1.2.3"}, "gives StudyInstanceUID but no PatientID"),
    ({"PatientID": 42}, "PatientID must be a string"),
    ({"PatientID": "A\nB"}, "PatientID holds a control character"),
    ({"AccessionNumber": "X" * 17, "PatientID": "X"}, "AccessionNumber is not a valid SH value"),
    ({"patientid": "X"}, "did you mean 'PatientID'"),
    ({"fs": -5}, "'fs' must be a positive number"),
    ({"fs": True}, "'fs' must be a positive number"),
    ({"units": "mv"}, "'units' must be one of"),
    ([1, 2], "must be an object"),
])
def test_bad_values_are_refused_naming_the_key_never_the_value(params, reason):
    with pytest.raises(InputError, match=None) as info:
        parse_sidecar(params)
    assert reason in str(info.value)
    for value in ("1970-01-01", "Doe", "A\nB", "male"):
        assert value not in str(info.value)


@pytest.mark.parametrize("text, reason", [("[" * 20_000, "not usable JSON"), ('{"fs": ' + "9" * 5000 + "}",
                                                                                  "not usable JSON"),
                                          ("{not json", "not readable JSON"), ("x" * 70_000, "larger than")])
def test_hostile_sidecars_are_refused_in_one_line(tmp_path, text, reason):
    path = tmp_path / "rec.json"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_sidecar(path)
    assert reason in str(info.value) and "\n" not in str(info.value)
