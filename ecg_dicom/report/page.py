"""Draw the standard 12-lead ECG page (PDF or PNG) of one reconstruction, true to scale.

Layout, in millimetres on A4 (297 × 210) or Letter (279.4 × 215.9) landscape, printed at
100 %: a 260 × 160 mm grid (1 mm and 5 mm lines) centred across the page; three rows of
four 2.5 s columns (I, aVR, V1, V4 / II, aVL, V2, V5 / III, aVF, V3, V6, each column the next
2.5 s as on a cart's printout) and a 10 s rhythm strip of the measured lead; 25 mm/s and
10 mm/mV; a 1 mV, 0.2 s calibration pulse at the start of each row. Above the grid the
banner "AI-reconstructed leads — not for diagnosis", what the source said (patient name and
ID, acquisition date and time, device, sampling rate, and whether the rate was assumed), the
model's name and version, the heart rate and RR regularity of the measured lead (the gate's
R-peak detector) and the signal-quality verdict; below it the scale and filter.

Honest marking: the measured lead is black and labelled "measured"; the 11 others are blue,
labelled "AI" (the four computed limb leads "AI, calc."), each with the model's RMS
uncertainty σ in mV. A recorded ECG (``recorded``: a cart's own 12 leads, nothing
reconstructed) is drawn all black under a neutral banner that says so. Traces get a
zero-phase 0.5 Hz high-pass for display only (as a cart's baseline filter); no low-pass, no
notch: what the lead holds is what is drawn. As on a cart, each trace is clipped at its own
row, and when a complex would leave its row at 10 mm/mV by more than 5 mm the whole page is
drawn at half gain (5 mm/mV, the calibration pulse too), printed beside the heart rate and
in the footer. The page shows the first
10 s of a longer record and says so ("0–10 s of 38.4 s").

matplotlib draws it (a figure whose one axes spans the page in mm, so every coordinate below
is a length on paper): one library for the PDF and the PNG, already used for the model card's
figures. Fonts, in the PDF: text that WinAnsi (cp1252) encodes is set in the PDF core fonts
Helvetica and Helvetica-Bold, which every reader has and nothing embeds (metric-compatible
Nimbus Sans / Arial where the reader substitutes); any other character (σ, a Cyrillic or
Greek patient name) in DejaVu Sans, embedded as Type 3 with its character codes, as the
whole page was before. A line mixing both is cut into runs drawn end to end
(:mod:`.corefont`). ``pdftotext`` and a viewer's search find every text either way. Why:
matplotlib lays out each character of a TrueType or Type 3 text in Python (~50 µs each,
~1500 on a page), a core-font text is one string. Together with the grid as one path per
colour (not ~420 separate paths), lines added without ``ax.plot``'s data-limit bookkeeping
and zlib level 3 instead of 9, the Mortara page went from 212 to 109 ms median and from 161 to
139 KB (``bench/page.py``, both in the same run on the 2-core dev machine). Level 3: 15 ms
faster than 6 for 13 KB more (6 is 125 KB, 9 no smaller and 19 ms slower still, 1 saves 3 ms
more for 11 KB more); the page crosses loopback or a LAN to PACS, where 13 KB cost nothing
and 15 ms count against the 300 ms store-to-PACS budget. DejaVu covers Latin, Greek and
Cyrillic, not CJK: a Chinese name is drawn as boxes, now as before (pdftotext still reads it).
The PNG (``plot --out x.png``) is all DejaVu, as before. matplotlib's rcParams are global and
the core-font texts switch one while drawing: one page is drawn at a time per process.
"""

from __future__ import annotations

import io
import textwrap
import threading
from dataclasses import dataclass, field

import numpy as np

from ecg_dicom.core.preprocess import highpass
from ecg_dicom.core.quality import RR_IRREGULAR, QualityReport, rhythm
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
RECORDED_BANNER = "Recorded ECG — all 12 leads as measured by the device, none reconstructed"
HALF_GAIN_MM_PER_MV = 5.0
ROW_ROOM_MM = (22.5, 16.5)  # room above and below a row's baseline before its trace would leave the row
CLIP_TOLERANCE_MM = 5.0  # at 10 mm/mV a peak may be cut this much at its row's edge (as a cart cuts it)
LABEL_PT = 9.0  # lead and σ labels: legible on screen at 60 dpi
HEADER_PT = 8.2
HEADER_STEP_MM = 3.5
QUALITY_CHARS = 150  # characters per line of the quality verdict (two lines at most)
MEASURED_COLOUR = "#000000"
AI_COLOUR = "#0a4fb0"
GRID_MINOR = "#f5c6c6"
GRID_MAJOR = "#e08a8a"
WARN_COLOUR = "#b35900"
REJECT_COLOUR = "#c00000"
DISPLAY_HIGHPASS_HZ = 0.5
_DRAWING = threading.Lock()  # rcParams are global: one page at a time (see the module docstring)


@dataclass
class ReportData:
    """Everything one page shows.

    leads_uv: (12, N) µV in LEADS_12 order; fs: Hz; input_lead: the measured lead; header:
    what the source gave (DICOM keywords: PatientName, PatientID, PatientBirthDate,
    PatientSex, AcquisitionDateTime, Manufacturer, ManufacturerModelName, InstitutionName);
    sigma_uv: the model's RMS uncertainty per AI lead (µV) or None; quality: the gate's
    report or None; source_complete: the source holds all 12 leads, measured; fs_source: where
    the rate came from (``assumed (no sidecar)`` is printed beside it), or None. uncertainty_text: the
    record's reconstruction uncertainty in words, or None.
    """

    leads_uv: np.ndarray
    fs: float
    input_lead: str
    model_name: str
    model_version: str
    header: dict[str, str] = field(default_factory=dict)
    sigma_uv: dict[str, float] | None = None
    quality: QualityReport | None = None
    source_complete: bool = False
    fs_source: str | None = None
    recorded: bool = False
    uncertainty_text: str | None = None

    @property
    def rhythm_lead(self) -> str:
        """The lead of the rhythm strip: the measured one (II for a recorded 12-lead ECG)."""
        return "II" if self.recorded or self.input_lead not in LEADS_12 else self.input_lead

    @property
    def shown_s(self) -> tuple[float, float]:
        """(seconds shown on the page, seconds in the record)."""
        total = self.leads_uv.shape[1] / self.fs
        return min(RHYTHM_S, total), total

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
    shown, total = data.shown_s
    source = (f"Acquired: {acquired}    Device: {device}"
              + (f" ({h['InstitutionName']})" if h.get("InstitutionName") else "")
              + f"    Sampling rate: {data.fs:g} Hz{_rate_note(data.fs_source)}    Duration: {total:.1f} s"
              + (f" (this page: {_span(data)})" if total > shown + 0.05 else ""))
    if data.recorded:
        model = "Measured: all 12 leads, as recorded. Nothing on this page was reconstructed."
    elif data.source_complete:
        measured = _measured(data)
        model = (f"Source holds all 12 measured leads (read them there). Here: lead{'s' if len(measured) > 1 else ''}"
                 f" {' and '.join(measured)} measured; {12 - len(measured) - (4 if len(measured) > 1 else 0)} by"
                 f" {data.model_name} {data.model_version}")
    elif len(_measured(data)) == 1:
        model = (f"Measured: lead {data.input_lead} only. Other 11 leads: {data.model_name},"
                 f" model version {data.model_version}")
    else:
        model = (f"Measured: leads {' and '.join(_measured(data))} (III, aVR, aVL, aVF computed from them)."
                 f" V1-V6: {data.model_name}, model version {data.model_version}")
    return [patient, source, model, rhythm_line(data)]


def _span(data: ReportData) -> str:
    shown, total = data.shown_s
    return f"0–{shown:.4g} s of {total:.1f} s"


def rhythm_line(data: ReportData) -> str:
    """Heart rate and RR regularity of the rhythm lead (the measured one), as the gate measures them."""
    lead = data.rhythm_lead
    hr, variation, beats = rhythm(data.leads_uv[LEADS_12.index(lead)], data.fs)
    if hr is None:
        return f"Heart rate: no QRS complexes found in lead {lead}"
    regular = ("" if variation is None else
               f", RR {'irregular' if variation > RR_IRREGULAR else 'regular'} (variation {100 * variation:.0f} %)")
    return f"Heart rate: {hr:.0f} bpm{regular} — lead {lead}, {beats} beats in {data.shown_s[1]:.1f} s"


def _rate_note(fs_source: str | None) -> str:
    """`` (ASSUMED: no sidecar)`` when nothing said the rate; else nothing (the source said it)."""
    return " (ASSUMED: nothing gave the rate)" if fs_source and fs_source.startswith("assumed") else ""


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
    """The 1 mm and 5 mm lines, each colour one path of separate segments (one PDF path each
    rather than one per line). Added as plain artists, as every line here: the axes' limits
    are the page, so nothing needs matplotlib's data limits (add_patch would walk all 850
    vertices in Python for them)."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path

    minor, major = [], []
    for i in range(int(GRID_W_MM) + 1):
        (major if i % 5 == 0 else minor).append([(x0 + i, y0), (x0 + i, y0 + GRID_H_MM)])
    for j in range(int(GRID_H_MM) + 1):
        (major if j % 5 == 0 else minor).append([(x0, y0 + j), (x0 + GRID_W_MM, y0 + j)])
    for segments, colour, width in ((minor, GRID_MINOR, 0.25), (major, GRID_MAJOR, 0.55)):
        codes = np.tile([Path.MOVETO, Path.LINETO], len(segments))
        ax.add_artist(PathPatch(Path(np.reshape(segments, (-1, 2)), codes), fill=False, edgecolor=colour,
                                linewidth=width, capstyle="butt", zorder=1))


def _line(ax, xs, ys, **kwargs):
    """A Line2D through (``xs``, ``ys``) in mm on ``ax``: ``ax.plot`` without its argument
    parsing and data-limit update."""
    from matplotlib.lines import Line2D

    line = Line2D(xs, ys, **kwargs)
    ax.add_artist(line)
    return line


def _calibration(ax, x: float, baseline: float, mm_per_mv: float = MM_PER_MV) -> None:
    """A 1 mV (``mm_per_mv`` mm), 0.2 s (5 mm) pulse from x+1 mm."""
    xs = [x + 1, x + 2, x + 2, x + 7, x + 7, x + 8]
    ys = [baseline, baseline, baseline + mm_per_mv, baseline + mm_per_mv, baseline, baseline]
    _line(ax, xs, ys, color=MEASURED_COLOUR, linewidth=0.8, zorder=3, solid_joinstyle="miter")


def _lead_label(data: ReportData, lead: str, rhythm: bool = False) -> tuple[str, str]:
    shown, total = data.shown_s
    strip = "" if not rhythm else (f"  (rhythm strip, {_span(data)})" if total > shown + 0.05 else
                                   f"  (rhythm strip, {shown:.4g} s)")
    if data.recorded:
        return f"{lead}{strip}", MEASURED_COLOUR
    if lead in _measured(data):
        return f"{lead}  measured{strip}", MEASURED_COLOUR
    if lead in DERIVED_LIMB_LEADS and len(_measured(data)) > 1:  # from two measured leads: exact
        return f"{lead}  calc. from I, II", MEASURED_COLOUR
    kind = "AI, calc." if lead in DERIVED_LIMB_LEADS else "AI"
    sigma = (data.sigma_uv or {}).get(lead)
    conf = f"  σ {sigma / 1000:.2f} mV" if sigma is not None else "  σ n/a"
    return f"{lead}  {kind}{conf}", AI_COLOUR


def _layout(data: ReportData, top: float) -> list[tuple[str, int, int, float, float, tuple[float, float], bool]]:
    """What each trace shows: (lead, first sample, stop sample, x of its start (mm), baseline
    (mm), its row's (bottom, top) in mm, rhythm strip?), rows of four 2.5 s columns then the
    rhythm strip."""
    n = data.leads_uv.shape[1]
    seg = int(round(SEGMENT_S * data.fs))
    out = []
    for r, row in enumerate([*LAYOUT, (data.rhythm_lead,)]):
        baseline = top - ROW_MM * (r + 0.5) - (3.0 if r < 3 else 1.0)
        band = (top - ROW_MM * (r + 1), top - ROW_MM * r)
        for c, lead in enumerate(row):
            start, stop = (0, int(round(RHYTHM_S * data.fs))) if r == 3 else (c * seg, (c + 1) * seg)
            out.append((lead, start, min(stop, n), (0 if r == 3 else c * SEGMENT_S * MM_PER_S), baseline, band,
                        r == 3))
    return out


def page_gain(display: np.ndarray, data: ReportData) -> tuple[float, float]:
    """(mm/mV for the page, the tallest excursion in mV): 10 mm/mV, or half gain when a
    complex would leave its row at 10 mm/mV (room: :data:`ROW_ROOM_MM` above / below) by more
    than :data:`CLIP_TOLERANCE_MM`; a peak within that is cut at its row, as a cart does."""
    up = down = 0.0
    for lead, start, stop, *_ in _layout(data, 0.0):
        if start < stop:
            part = display[LEADS_12.index(lead), start:stop] / 1000.0
            up, down = max(up, float(part.max())), max(down, float(-part.min()))
    fits = (up * MM_PER_MV <= ROW_ROOM_MM[0] + CLIP_TOLERANCE_MM
            and down * MM_PER_MV <= ROW_ROOM_MM[1] + CLIP_TOLERANCE_MM)
    return (MM_PER_MV if fits else HALF_GAIN_MM_PER_MV), max(up, down)


def draw_page(data: ReportData, paper: str = "A4", core_fonts: bool = False):
    """The page as a matplotlib Figure (one axes in mm, origin bottom left). ``core_fonts``
    (for PDF only): text in Helvetica, not embedded, where the core fonts encode it (see
    :func:`~ecg_dicom.report.corefont.add_text`), the rest in DejaVu Sans."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ecg_dicom.report.corefont import add_text

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
    banner, banner_colour, banner_fill = ((RECORDED_BANNER, MEASURED_COLOUR, "#eeeeee") if data.recorded
                                          else (BANNER, REJECT_COLOUR, "#fde8e8"))
    ax.add_patch(Rectangle((x0, height - 14.5), GRID_W_MM, 7.0, facecolor=banner_fill, edgecolor=banner_colour,
                           linewidth=0.8, zorder=2))
    add_text(ax, width / 2, height - 11.0, banner, core_fonts, ha="center", va="center", fontsize=12,
             weight="bold", color=banner_colour, zorder=3)
    lines = [(line, MEASURED_COLOUR) for line in header_lines(data)]
    text, colour = _quality_line(data.quality, data.input_lead)
    quality = textwrap.wrap(text, QUALITY_CHARS)
    if data.uncertainty_text:  # six lines fit above the grid: the quality gets one, the uncertainty the last
        lines.append((quality[0] if len(quality) == 1 else quality[0][:QUALITY_CHARS - 1] + "…", colour))
        flagged = "unreliable" in data.uncertainty_text or "caution" in data.uncertainty_text
        lines.append((data.uncertainty_text[:QUALITY_CHARS], WARN_COLOUR if flagged else AI_COLOUR))
    else:
        lines += [(part, colour) for part in quality[:2]]
    for k, (line, colour) in enumerate(lines):
        add_text(ax, x0, height - 18.5 - HEADER_STEP_MM * k, line, core_fonts, ha="left", va="center",
                 fontsize=HEADER_PT, color=colour, zorder=3,
                 weight="bold" if colour != MEASURED_COLOUR or k == 3 else "normal")

    # traces, each clipped to its own row, at full or half gain
    display = highpass(leads, data.fs, DISPLAY_HIGHPASS_HZ) if leads.shape[1] > 3 * data.fs / DISPLAY_HIGHPASS_HZ \
        else leads - np.median(leads, axis=1, keepdims=True)
    gain, tallest = page_gain(display, data)
    t_mm = np.arange(leads.shape[1]) / data.fs * MM_PER_S
    calibrated = set()
    for lead, start, stop, dx, baseline, (bottom, row_top), strip in _layout(data, top):
        if baseline not in calibrated:
            calibrated.add(baseline)
            _calibration(ax, x0, baseline, gain)
        label, colour = _lead_label(data, lead, strip)
        x_start = x0 + CAL_MM + dx
        add_text(ax, x_start + 1.0, baseline + 12.5, label, core_fonts, fontsize=LABEL_PT, color=colour, ha="left",
                 va="bottom", zorder=4, weight="bold" if lead in _measured(data) or data.recorded else "normal",
                 bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.6})
        if dx > 0:  # the column boundary, as carts mark it
            _line(ax, [x_start, x_start], [baseline - 3, baseline + 3], color=MEASURED_COLOUR, linewidth=0.6,
                  zorder=3)
        if start >= stop:
            continue
        k = LEADS_12.index(lead)
        xs = x0 + CAL_MM + t_mm[start:stop]
        ys = baseline + display[k, start:stop] / 1000.0 * gain
        line = _line(ax, xs, ys, color=colour, linewidth=0.6, zorder=3, solid_joinstyle="round")
        line.set_clip_path(Rectangle((x0, bottom), GRID_W_MM, row_top - bottom, transform=ax.transData))

    # footer: scale, filter, legend
    scale = f"{gain:g} mm/mV" + ("" if gain == MM_PER_MV else " (HALF GAIN)")
    if gain != MM_PER_MV:  # said where the eye starts too, beside the heart rate
        half = f"HALF GAIN: {gain:g} mm/mV (complexes up to {tallest:.1f} mV; calibration pulse 1 mV = {gain:g} mm)"
        add_text(ax, x0 + GRID_W_MM, height - 18.5 - HEADER_STEP_MM * 3, half, core_fonts, ha="right", va="center",
                 fontsize=HEADER_PT, color=WARN_COLOUR, weight="bold", zorder=3)
    footer = (f"{MM_PER_S:g} mm/s    {scale}    grid 1 mm / 5 mm    display filter"
              f" {DISPLAY_HIGHPASS_HZ:g} Hz high-pass (zero-phase), no low-pass, no notch    "
              f"{paper} landscape: true to scale when printed at 100 % (no 'fit to page')")
    # bold (half gain) is wider: the same line in a smaller size stays inside the grid's width
    add_text(ax, x0, y0 - 4.0, footer, core_fonts, fontsize=6.8 if gain == MM_PER_MV else 6.2, ha="left",
             va="center", color=MEASURED_COLOUR if gain == MM_PER_MV else WARN_COLOUR,
             weight="normal" if gain == MM_PER_MV else "bold")
    legend = ("All leads black: as measured by the recording device; nothing reconstructed." if data.recorded else
              "Black: measured lead.  Blue, \"AI\": reconstructed by the model from the measured lead"
              " (\"calc.\": computed from I and II by Einthoven/Goldberger).  σ: the model's RMS uncertainty of"
              " the lead.")
    add_text(ax, x0, y0 - 8.0, legend, core_fonts, fontsize=6.8, ha="left", va="center",
             color=MEASURED_COLOUR if data.recorded else AI_COLOUR)
    return fig


def render(data: ReportData, fmt: str = "pdf", paper: str = "A4", dpi: int = 150) -> bytes:
    """The page as PDF or PNG bytes (``fmt`` "pdf" or "png"; ``dpi`` for PNG)."""
    import matplotlib

    from ecg_dicom.report.corefont import cache_core_font_metrics

    if fmt not in ("pdf", "png"):
        raise ValueError(f"format must be pdf or png, got {fmt!r}")
    cache_core_font_metrics()
    with _DRAWING, matplotlib.rc_context({"pdf.fonttype": 3, "pdf.compression": 3, "path.simplify": True,
                                "font.family": "DejaVu Sans"}):
        fig = draw_page(data, paper, core_fonts=fmt == "pdf")
        buffer = io.BytesIO()
        metadata = ({"Title": f"12-lead ECG — {BANNER}", "Creator": f"ecg-dicom ({data.model_version})",
                     "CreationDate": None} if fmt == "pdf" else {"Software": "ecg-dicom"})
        fig.savefig(buffer, format=fmt, dpi=dpi if fmt == "png" else 72, metadata=metadata)
    return buffer.getvalue()
