"""The long-running service (``ecg-dicom serve``) and the commands that look after it.

:mod:`~ecg_dicom.service.app` wires the parts: ingest (C-STORE SCP, watched folder) ->
:mod:`ecg_dicom.queue` -> :mod:`~ecg_dicom.service.worker` (core model) -> outputs (files,
PACS delivery). Beside them: :mod:`~ecg_dicom.service.lock` (one service per work folder),
:mod:`~ecg_dicom.service.monitor` (``/health``, ``/metrics``),
:mod:`~ecg_dicom.service.status` (``ecg-dicom status``) and
:mod:`~ecg_dicom.service.redeliver` (``ecg-dicom redeliver``).

The Prometheus counters every part updates (:mod:`ecg_dicom.metrics`) and handing freed
memory back to the system (:mod:`ecg_dicom.memory`) live below ingest and outputs, which use
them. Nothing is imported here, so that ``status`` stays light, without loading the whole
service.
"""
