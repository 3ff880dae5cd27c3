"""``ecg-dicom status --config site.yaml``: job counts of the service's durable queue."""

from __future__ import annotations

import argparse

from ecg_dicom.config import load_config_or_report
from ecg_dicom.queue import JobQueue

# state in the store -> how it is printed
LABELS = {"waiting": "waiting", "processing": "processing", "delivering": "delivering", "done": "done",
          "rejected": "rejected", "dead": "dead-lettered"}


def run(args: argparse.Namespace) -> int:
    """Print one ``<state>: <count>`` line per state; 2 for a bad configuration."""
    settings = load_config_or_report(args.config, "status")
    if settings is None:
        return 2
    queue = JobQueue(settings.folders.queue_db)
    try:
        counts = queue.counts()
    finally:
        queue.close()
    width = max(len(label) for label in LABELS.values())
    for state, label in LABELS.items():
        print(f"{label + ':':<{width + 1}} {counts[state]}")
    return 0
