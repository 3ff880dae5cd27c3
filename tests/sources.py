"""Real 12-lead records written as a cart's 12-Lead ECG Waveform object: what the lead choice
and the accuracy monitor read. The object is the real Mortara ELI 250 file of
../shared/data/dicom/12lead (500 Hz, 12 × 5000 rhythm group) with its rhythm samples replaced
by the record's (1 µV per unit, so nothing is rounded away), its median-beat group dropped
(it would belong to another ECG) with the cart's annotations, and fresh UIDs, patient and device."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from ecg_dicom.leads import LEADS_12

TEMPLATE = "dicom/12lead/ecgtoolkit_example_eli250.dcm"   # 500 Hz, rhythm group of 12 x 5000


def write_12lead_source(shared_data: Path, leads_uv: np.ndarray, path: Path, patient_id: str,
                        model_name: str = "ELI250", manufacturer: str = "Mortara Instrument, Inc.") -> Path:
    """Write (12, 5000) µV at 500 Hz (LEADS_12 order, rounded to whole µV) as a 12-lead DICOM
    ECG at ``path``; returns ``path``."""
    leads_uv = np.asarray(leads_uv, dtype=np.float64)
    ds = pydicom.dcmread(shared_data / TEMPLATE)
    ds = copy.deepcopy(ds)
    rhythm = next(g for g in ds.WaveformSequence if "RHYTHM" in str(g.get("MultiplexGroupLabel", "")).upper())
    assert leads_uv.shape == (12, int(rhythm.NumberOfWaveformSamples)), leads_uv.shape
    order = []
    for channel in rhythm.ChannelDefinitionSequence:
        label = str(channel.ChannelSourceSequence[0].CodeMeaning).replace("Lead ", "").strip()
        order.append([lead.upper() for lead in LEADS_12].index(label.upper()))
        channel.ChannelSensitivity = "1"
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
    samples = np.clip(np.rint(leads_uv[order].T), -32768, 32767).astype("<i2")
    rhythm.WaveformData = samples.tobytes()
    ds.WaveformSequence = pydicom.Sequence([rhythm])
    if "WaveformAnnotationSequence" in ds:  # the cart's measurements of the ECG it recorded
        del ds.WaveformAnnotationSequence
    ds.PatientID = patient_id
    ds.PatientName = f"Record^{patient_id}"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model_name
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path
