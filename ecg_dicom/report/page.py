"""Draw the standard 12-lead ECG page (PDF or PNG) of one reconstruction, true to scale.

Layout, in millimetres on A4 (297 × 210) or Letter (279.4 × 215.9) landscape, printed at
100 %: a 260 × 160 mm grid (1 mm and 5 mm lines) centred across the page; three rows of
four 2.5 s columns (I, aVR, V1, V4 / II, aVL, V2, V5 / III, aVF, V3, V6, each column the next
2.5 s as on a cart's printout) and a 10 s rhythm strip of the measured lead; 25 mm/s and
10 mm/mV; a 1 mV, 0.2 s calibration pulse at the start of each row. Above the grid the
banner "AI-reconstructed leads — not for diagnosis", what the source said (patient name and
ID, acquisition date and time, device, sampling rate), the model's name and version and the
signal-quality verdict; below it the scale and filter.

Honest marking: the measured lead is black and labelled "measured"; the 11 others are blue,
labelled "AI" (the four computed limb leads "AI, calc."), each with the model's RMS
uncertainty σ in mV. Traces get a zero-phase 0.5 Hz high-pass for display only (as a cart's
baseline filter); no low-pass, no notch: what the lead holds is what is drawn.

matplotlib draws it (a figure whose one axes spans the page in mm, so every coordinate below
is a length on paper): one library for the PDF and the PNG, already used for the model card's
figures, with fonts that cover any patient name (DejaVu). Text is embedded as Type 3 fonts with
their character codes, so ``pdftotext`` and a viewer's search find the lead labels, the banner
and the model version; Type 3 renders in 0.3 s where TrueType subsetting took 0.7 s.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ecg_dicom.core.preprocess import highpass
from ecg_dicom.core.quality import QualityReport
from ecg_dicom.leads import DERIVED_LIMB_LEADS, LEADS_12, input_leads_of

PAPER_MM: dict[str, tuple[float, float]] = {"A4": (297.0, 210.0), "Letter": (279.4, 215.9)}
MM_PER_S = 25.0
MM_PER_MV = 10.0
SEGMENT_S = 2.5
RHYTHM_S = 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
GRID_W_MM = 260.0
GRID_H_MM = 160.0
ROW_MM = 40.0
CAL_MM = 10.0  # room at the start of each row for the calibration pulse
BANNER = "AI-reconstructed leads — not for diagnosis"
MEASURED_COLOUR = "#000000"
AI_COLOUR = "#0a4fb0"
GRID_MINOR = "#f5c6c6"
GRID_MAJOR = "#e08a8a"
WARN_COLOUR = "#b35900"
REJECT_COLOUR = "#c00000"
DISPLAY_HIGHPASS_HZ = 0.5


@dataclass
class ReportData:
    """Everything one page shows.

    leads_uv: (12, N) µV in LEADS_12 order; fs: Hz; input_lead: the measured lead; header:
    what the source gave (DICOM keywords: PatientName, PatientID, PatientBirthDate,
    PatientSex, AcquisitionDateTime, Manufacturer, ManufacturerModelName, InstitutionName);
    sigma_uv: the model's RMS uncertainty per AI lead (µV) or None; quality: the gate's
    report or None; uncertainty_text: the record's reconstruction uncertainty in words, or None.
    """

    leads_uv: np.ndarray
    fs: float
    input_lead: str
    model_name: str
    model_version: str
    header: dict[str, str] = field(default_factory=dict)
    sigma_uv: dict[str, float] | None = None
    quality: QualityReport | None = None
    uncertainty_text: str | None = None


def _person_name(value: str) -> str:
    """DICOM PN 'Family^Given^Middle' as 'Family, Given Middle'."""
    parts = [p for p in value.split("=")[0].split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if rest else family


def _date_time(value: str) -> str:
    """DICOM DT (YYYYMMDDHHMMSS.ffffff) as 'YYYY-MM-DD HH:MM:SS'."""
    digits = value.split(".")[0].split("+")[0].split("-")[0]
    if len(digits) < 8:
        return value
    text = f"{digits[0:4]}-{digits[4:6]}-{digits[6:8]}"
    if len(digits) >= 12:
        text += f" {digits[8:10]}:{digits[10:12]}"
        if len(digits) >= 14:
            text += f":{digits[12:14]}"
    return text


def header_lines(data: ReportData) -> list[str]:
    """The three lines of text under the banner."""
    h = data.header
    name = _person_name(h["PatientName"]) if h.get("PatientName") else "unknown"
    patient = f"Patient: {name}    ID: {h.get('PatientID') or 'unknown'}"
    if h.get("PatientBirthDate"):
        patient += f"    born {_date_time(h['PatientBirthDate'])}"
    if h.get("PatientSex"):
        patient += f"    sex {h['PatientSex']}"
    device = " ".join(v for v in (h.get("Manufacturer"), h.get("ManufacturerModelName")) if v) or "unknown"
    acquired = _date_time(h["AcquisitionDateTime"]) if h.get("AcquisitionDateTime") else "unknown"
    n = data.leads_uv.shape[1]
    source = (f"Acquired: {acquired}    Device: {device}"
              + (f" ({h['InstitutionName']})" if h.get("InstitutionName") else "")
              + f"    Sampling rate: {data.fs:g} Hz    Duration: {n / data.fs:.1f} s")
    measured = _measured(data)
    model = (f"Measured: lead {measured[0]} only. Other 11 leads: {data.model_name},"
             f" model version {data.model_version}" if len(measured) == 1 else
             f"Measured: leads {' and '.join(measured)} (III, aVR, aVL, aVF computed from them)."
             f" V1-V6: {data.model_name}, model version {data.model_version}")
    return [patient, source, model]


def _measured(data: ReportData) -> tuple[str, ...]:
    """The lead(s) measured: ("I",), ("II",) or ("I", "II") for the two-lead model."""
    try:
        return input_leads_of(data.input_lead)
    except ValueError:
        return (data.input_lead,)


def _quality_line(quality: QualityReport | None, input_lead: str) -> tuple[str, str]:
    input_lead = input_lead.replace("+", " and ")
    if quality is None:
        return f"Signal quality of lead {input_lead}: not assessed", MEASURED_COLOUR
    if not quality.flags:
        return f"Signal quality of lead {input_lead}: OK (no flag raised)", MEASURED_COLOUR
    colour = REJECT_COLOUR if quality.status == "reject" else WARN_COLOUR
    return (f"Signal quality of lead {input_lead}: {quality.status.upper()} — "
            + "; ".join(f.text for f in quality.flags)), colour


def _grid(ax, x0: float, y0: float) -> None:
    from matplotlib.collections import LineCollection

    minor, major = [], []
    for i in range(int(GRID_W_MM) + 1):
        (major if i % 5 == 0 else minor).append([(x0 + i, y0), (x0 + i, y0 + GRID_H_MM)])
    for j in range(int(GRID_H_MM) + 1):
        (major if j % 5 == 0 else minor).append([(x0, y0 + j), (x0 + GRID_W_MM, y0 + j)])
    ax.add_collection(LineCollection(minor, colors=GRID_MINOR, linewidths=0.25, zorder=1))
    ax.add_collection(LineCollection(major, colors=GRID_MAJOR, linewidths=0.55, zorder=1))


def _calibration(ax, x: float, baseline: float) -> None:
    """A 1 mV (10 mm), 0.2 s (5 mm) pulse from x+1 mm."""
    xs = [x + 1, x + 2, x + 2, x + 7, x + 7, x + 8]
    ys = [baseline, baseline, baseline + MM_PER_MV, baseline + MM_PER_MV, baseline, baseline]
    ax.plot(xs, ys, color=MEASURED_COLOUR, linewidth=0.8, zorder=3, solid_joinstyle="miter")


def _lead_label(data: ReportData, lead: str, rhythm: bool = False) -> tuple[str, str]:
    if lead in _measured(data):
        return (f"{lead}  measured" + ("  (rhythm strip, 10 s)" if rhythm else "")), MEASURED_COLOUR
    if lead in DERIVED_LIMB_LEADS and len(_measured(data)) > 1:  # from two measured leads: exact
        return f"{lead}  calc. from I, II", MEASURED_COLOUR
    kind = "AI, calc." if lead in DERIVED_LIMB_LEADS else "AI"
    sigma = (data.sigma_uv or {}).get(lead)
    conf = f"  σ {sigma / 1000:.2f} mV" if sigma is not None else "  σ n/a"
    return f"{lead}  {kind}{conf}", AI_COLOUR


def draw_page(data: ReportData, paper: str = "A4"):
    """The page as a matplotlib Figure (one axes in mm, origin bottom left)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if paper not in PAPER_MM:
        raise ValueError(f"paper must be one of {', '.join(PAPER_MM)}, got {paper!r}")
    leads = np.asarray(data.leads_uv, dtype=np.float64)
    if leads.ndim != 2 or leads.shape[0] != len(LEADS_12):
        raise ValueError(f"leads_uv must be (12, N), got {leads.shape}")
    width, height = PAPER_MM[paper]
    fig = Figure(figsize=(width / 25.4, height / 25.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()

    x0 = (width - GRID_W_MM) / 2
    top = height - 38.0
    y0 = top - GRID_H_MM
    _grid(ax, x0, y0)

    # banner and header
    ax.add_patch(Rectangle((x0, height - 14.5), GRID_W_MM, 7.0, facecolor="#fde8e8", edgecolor=REJECT_COLOUR,
                           linewidth=0.8, zorder=2))
    ax.text(width / 2, height - 11.0, BANNER, ha="center", va="center", fontsize=12, weight="bold",
            color=REJECT_COLOUR, zorder=3)
    for k, line in enumerate(header_lines(data)):
        ax.text(x0, height - 19.0 - 4.2 * k, line, ha="left", va="center", fontsize=8.2, zorder=3)
    text, colour = _quality_line(data.quality, data.input_lead)
    ax.text(x0, height - 19.0 - 4.2 * 3, text[:230], ha="left", va="center", fontsize=8.2, color=colour,
            zorder=3, weight="bold" if colour != MEASURED_COLOUR else "normal")
    if data.uncertainty_text:  # one small line between the quality line and the grid
        flagged = "unreliable" in data.uncertainty_text or "caution" in data.uncertainty_text
        ax.text(x0, height - 35.3, data.uncertainty_text[:200], ha="left", va="center", fontsize=7.0, zorder=3,
                color=WARN_COLOUR if flagged else AI_COLOUR, weight="bold" if flagged else "normal")

    # traces, clipped to the grid
    display = highpass(leads, data.fs, DISPLAY_HIGHPASS_HZ) if leads.shape[1] > 3 * data.fs / DISPLAY_HIGHPASS_HZ \
        else leads - np.median(leads, axis=1, keepdims=True)
    clip = Rectangle((x0, y0), GRID_W_MM, GRID_H_MM, transform=ax.transData)
    t_mm = np.arange(leads.shape[1]) / data.fs * MM_PER_S
    seg = int(round(SEGMENT_S * data.fs))
    rows = [*LAYOUT, (_measured(data)[-1],)]
    for r, row in enumerate(rows):
        baseline = top - ROW_MM * (r + 0.5) - (3.0 if r < 3 else 1.0)
        _calibration(ax, x0, baseline)
        for c, lead in enumerate(row):
            rhythm = r == 3
            start, stop = (0, int(round(RHYTHM_S * data.fs))) if rhythm else (c * seg, (c + 1) * seg)
            stop = min(stop, leads.shape[1])
            label, colour = _lead_label(data, lead, rhythm)
            x_start = x0 + CAL_MM + (0 if rhythm else c * SEGMENT_S * MM_PER_S)
            ax.text(x_start + 1.0, baseline + 13.0, label, fontsize=7.2, color=colour, ha="left", va="bottom",
                    zorder=4, weight="bold" if lead == data.input_lead else "normal")
            if not rhythm and c > 0:  # the column boundary, as carts mark it
                ax.plot([x_start, x_start], [baseline - 3, baseline + 3], color=MEASURED_COLOUR, linewidth=0.6,
                        zorder=3)
            if start >= stop:
                continue
            k = LEADS_12.index(lead)
            xs = x0 + CAL_MM + t_mm[start:stop]
            ys = baseline + display[k, start:stop] / 1000.0 * MM_PER_MV
            (line,) = ax.plot(xs, ys, color=colour, linewidth=0.6, zorder=3, solid_joinstyle="round")
            line.set_clip_path(clip)

    # footer: scale, filter, legend
    footer = (f"{MM_PER_S:g} mm/s    {MM_PER_MV:g} mm/mV    grid 1 mm / 5 mm    display filter"
              f" {DISPLAY_HIGHPASS_HZ:g} Hz high-pass (zero-phase), no low-pass, no notch    "
              f"{paper} landscape: true to scale when printed at 100 % (no 'fit to page')")
    ax.text(x0, y0 - 4.0, footer, fontsize=6.8, ha="left", va="center")
    ax.text(x0, y0 - 8.0, "Black: measured lead.  Blue, \"AI\": reconstructed by the model from the measured lead"
            " (\"calc.\": computed from I and II by Einthoven/Goldberger).  σ: the model's RMS uncertainty of"
            " the lead.", fontsize=6.8, ha="left", va="center", color=AI_COLOUR)
    return fig


def render(data: ReportData, fmt: str = "pdf", paper: str = "A4", dpi: int = 150) -> bytes:
    """The page as PDF or PNG bytes (``fmt`` "pdf" or "png"; ``dpi`` for PNG)."""
    import matplotlib

    if fmt not in ("pdf", "png"):
        raise ValueError(f"format must be pdf or png, got {fmt!r}")
    with matplotlib.rc_context({"pdf.fonttype": 3, "pdf.compression": 9, "path.simplify": True,
                                "font.family": "DejaVu Sans"}):
        fig = draw_page(data, paper)
        buffer = io.BytesIO()
        metadata = ({"Title": f"12-lead ECG — {BANNER}", "Creator": f"ecg-dicom ({data.model_version})",
                     "CreationDate": None} if fmt == "pdf" else {"Software": "ecg-dicom"})
        fig.savefig(buffer, format=fmt, dpi=dpi if fmt == "png" else 72, metadata=metadata)
    return buffer.getvalue()
