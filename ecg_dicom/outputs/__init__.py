"""Outputs of a conversion: atomic .npy / reason files and 12-lead ECG DICOM objects."""
