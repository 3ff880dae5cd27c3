"""The batch converter (``ecg-dicom convert``): a tree of one-lead inputs -> 12-lead results.

:mod:`~ecg_dicom.convert.archive` finds the inputs and keeps their completion markers;
:mod:`~ecg_dicom.convert.batch` converts them in batches in this process (or forked
workers); :mod:`~ecg_dicom.convert.ray_engine` runs the same batch step on Ray Data
(``--engine ray``).

Nothing is imported here, so that ``ecg-dicom convert`` pays only for what its inputs need.
"""
