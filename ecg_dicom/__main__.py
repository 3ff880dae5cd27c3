"""``python -m ecg_dicom`` is ``ecg-dicom``."""

import sys

from ecg_dicom.cli import main

if __name__ == "__main__":  # not when a spawned child (the page drawing process) imports it
    sys.exit(main())
