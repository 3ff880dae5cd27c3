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
