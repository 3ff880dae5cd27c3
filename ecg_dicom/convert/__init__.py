"""The batch converter (``ecg-dicom convert``): a tree of one-lead inputs -> 12-lead results.

:mod:`~ecg_dicom.convert.archive` finds the inputs and keeps their completion markers;
:mod:`~ecg_dicom.convert.batch` converts them in batches in this process (or forked
workers); :mod:`~ecg_dicom.convert.ray_engine` runs the same batch step on Ray Data
(``--engine ray``).

Nothing is imported here, so that ``ecg-dicom convert`` pays only for what its inputs need;
:func:`run` imports the engine asked for (``ray_engine`` uses ``batch``, never the reverse).
"""

import argparse


def run(args: argparse.Namespace) -> int:
    """``ecg-dicom convert``: hand the arguments to the engine asked for (exit 0, 1 or 2).
    Warnings (ours, pydicom's) reach stderr as ``serve`` logs them: escaped, values read
    from an input hashed (:mod:`ecg_dicom.logsafe`)."""
    from ecg_dicom.logsafe import routed

    with routed("ecg-dicom"):
        if getattr(args, "engine", "single") == "ray":
            from ecg_dicom.convert.ray_engine import run_ray

            return run_ray(args)
        from ecg_dicom.convert.batch import run as run_single

        return run_single(args)
