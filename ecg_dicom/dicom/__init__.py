"""Everything this package knows about DICOM: codes and SOP classes, reading an ECG lead
from a waveform object, writing 12-lead results (see :mod:`.codes`, :mod:`.reader`,
:mod:`.writer`). Network services (the C-STORE listener, delivery to PACS) use it from
``ingest/`` and ``outputs/``; ``core/`` never does."""
