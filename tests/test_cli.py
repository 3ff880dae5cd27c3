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
