"""DICOM codes and SOP classes of ECG waveforms (PS3.3 A.34, PS3.16 CID 3001)."""

from __future__ import annotations

# SCP-ECG (coding scheme "SCPECG", version "1.3") and MDC codes of the 12 leads (CID 3001).
SCPECG_CODES: dict[str, str] = {
    "I": "5.6.3-9-1", "II": "5.6.3-9-2", "III": "5.6.3-9-61", "aVR": "5.6.3-9-62",
    "aVL": "5.6.3-9-63", "aVF": "5.6.3-9-64", "V1": "5.6.3-9-3", "V2": "5.6.3-9-4",
    "V3": "5.6.3-9-5", "V4": "5.6.3-9-6", "V5": "5.6.3-9-7", "V6": "5.6.3-9-8",
}
MDC_CODES: dict[str, str] = {
    "I": "2:1", "II": "2:2", "III": "2:61", "aVR": "2:62", "aVL": "2:63", "aVF": "2:64",
    "V1": "2:3", "V2": "2:4", "V3": "2:5", "V4": "2:6", "V5": "2:7", "V6": "2:8",
}

# how our results name the model (Manufacturer's Model Name, the result's .json)
MODEL_NAME = "ecg-dicom BiLSTM+Attention 12-lead reconstruction"
AI_GROUP_LABEL = "AI RECONSTRUCTED"  # MultiplexGroupLabel of the group of reconstructed leads

TWELVE_LEAD_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.3"
HEMODYNAMIC_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.2.1"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"

# SOP classes whose waveforms carry ECG channels, readable as input (GE MAC-Lab stores
# 12-lead ECGs as Hemodynamic Waveform)
ECG_WAVEFORM_SOP_CLASSES: dict[str, str] = {
    TWELVE_LEAD_ECG_STORAGE: "12-lead ECG Waveform Storage",
    GENERAL_ECG_STORAGE: "General ECG Waveform Storage",
    AMBULATORY_ECG_STORAGE: "Ambulatory ECG Waveform Storage",
    HEMODYNAMIC_WAVEFORM_STORAGE: "Hemodynamic Waveform Storage",
}
# SOP classes of the objects we write (and C-STORE to PACS): the waveform and the report page
OUTPUT_SOP_CLASSES: tuple[str, ...] = (TWELVE_LEAD_ECG_STORAGE, GENERAL_ECG_STORAGE, ENCAPSULATED_PDF_STORAGE)
