"""`ecg-dicom --help` as a newcomer reads it (issue 11 item 9)."""

import argparse

from ecg_dicom.cli import build_parser, main


def test_help_opens_with_user_text_and_every_argument_says_what_it_is(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    assert "Reconstruct a 12-lead ECG from one lead" in text.split("\n\n")[1]
    assert "argparse" not in text and ".venv/bin/ecg-dicom" in text
    undocumented = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                undocumented += [f"{name} {a.option_strings or a.dest}" for a in sub._actions if not a.help]
    assert undocumented == []


def test_the_service_logs_a_pydicom_warning_once(shared_data):
    """Issue 11 item 9: `Invalid value for VR UI` was printed twice per value by `serve`."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from ecg_dicom.service.app import setup_logging
        setup_logging("INFO")
        import numpy as np
        from ecg_dicom.inputs import load_lead
        from ecg_dicom.dicom.writer import build_ecg_datasets
        lead = load_lead({str(shared_data / "dicom/12lead/ecgtoolkit_example_eli250.dcm")!r}, "I")
        build_ecg_datasets(np.zeros((12, 5000)) + np.arange(5000), 500.0, "v", "I", lead.dataset, "h")
    """)
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stderr
    # two invalid UIDs (the instance's and the study's), each warned about once (values hashed in the log)
    assert err.count("Invalid value for VR UI") == 2, err


def test_convert_prints_pydicom_warnings_as_serve_logs_them_with_one_hash_per_uid(shared_data, tiny_checkpoint,
                                                                                  tmp_path):
    """Issue 20 item 4: `convert` printed pydicom's warnings with the raw invalid UID and its
    source path, and the same UID hashed two ways ('#87ef283b' vs uid#5dbaedc7)."""
    import shutil
    import subprocess
    import sys

    from pydicom import dcmread

    from ecg_dicom.logsafe import digest, uid_hash

    src = shared_data / "dicom/12lead/ecgtoolkit_example_eli250.dcm"
    uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    (tmp_path / "in").mkdir()
    shutil.copy(src, tmp_path / "in" / "cart.dcm")
    (tmp_path / "in" / "empty.npy").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "ecg_dicom", "convert", str(tmp_path / "in"), str(tmp_path / "out"),
                           "--checkpoint", str(tiny_checkpoint), "--format", "dicom"],
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 1 and "converted 1, rejected 1" in err, err
    assert uid not in err and "valuerep.py" not in err and "warn_and_log" not in err
    assert f"Invalid value for VR UI: '#{digest(uid)}'" in err and f"{uid_hash(uid)} is not a valid UID" in err
    assert err.count("Invalid value for VR UI") == 2, err     # the instance's and the study's, once each
    assert "skipped empty: empty file (0 bytes)" in err
    assert all(line.startswith("ecg-dicom") or line.startswith("converted") for line in err.splitlines()), err
