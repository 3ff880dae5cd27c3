"""``python -m ecg_dicom`` is ``ecg-dicom``."""

import sys

from ecg_dicom.cli import main

sys.exit(main())
