"""The 12-lead page: true to scale (page size in mm, grid period and calibration pulse in
pixels after rasterising with pdftoppm), searchable (pdftotext), honest marking, and the
same page as a DICOM Encapsulated PDF object (dciodvfy, deterministic UIDs, references)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from peers import dciodvfy_errors
from PIL import Image
from pydicom import dcmread
from scipy import signal as sps

from ecg_dicom.cli import main
from ecg_dicom.convert.batch import convert_folder
from ecg_dicom.dicom.codes import ENCAPSULATED_PDF_STORAGE
from ecg_dicom.dicom.pdf import read_pdf_dicom
from ecg_dicom.leads import LEADS_12
from ecg_dicom.report.page import AI_COLOUR, BANNER
from ecg_dicom.training.data import read_wfdb_record

MORTARA = "dicom/12lead/mortara_eli250_waveform_ecg.dcm"
DPI = 254  # 10 pixels per mm
SIDECAR = {"fs": 500, "PatientID": "MRN-0042", "PatientName": "Doe^Jane", "PatientSex": "F",
           "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.1", "AcquisitionDateTime": "20240501101502",
           "Manufacturer": "AliveCor", "ManufacturerModelName": "KardiaMobile"}


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} (Debian package poppler-utils) is required: make system-deps"
    return found


def pdf_text(pdf: Path) -> str:
    return subprocess.run([tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def rasterise(pdf: Path, out: Path, dpi: int = DPI) -> np.ndarray:
    """pdftoppm's (H, W, 3) uint8 picture of the page."""
    subprocess.run([tool("pdftoppm"), "-r", str(dpi), "-png", "-singlefile", str(pdf), str(out)], check=True)
    return np.asarray(Image.open(f"{out}.png").convert("RGB"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_data, tiny_reconstructor) -> Path:
    """A real cart's DICOM ECG and a real PTB-XL lead I converted with --report --format both."""
    inp = tmp_path_factory.mktemp("in")
    shutil.copy(shared_data / MORTARA, inp / "mortara.dcm")
    rec = read_wfdb_record(shared_data / "ecg12" / "ptbxl" / "records500" / "00000" / "00180_hr.hea")
    np.save(inp / "ptbxl180.npy", rec.leads[0].astype(np.float32))
    np.save(inp / "kardia.npy", rec.leads[0].astype(np.float32))
    (inp / "kardia.json").write_text(json.dumps(SIDECAR))
    out = tmp_path_factory.mktemp("out")
    report = convert_folder(inp, out, tiny_reconstructor, fs=500.0, output_format="both", report_paper="A4")
    assert not report.failed, report.failed
    return out


def test_outputs_of_convert_with_report(converted):
    names = sorted(p.name for p in converted.iterdir())
    for stem in ("mortara", "ptbxl180"):
        for suffix in (".npy", ".dcm", ".json", ".pdf", ".report.dcm"):
            assert f"{stem}{suffix}" in names
    assert (converted / "mortara.pdf").stat().st_size < 300_000   # small: vector, compressed


def test_page_size_in_mm(converted, tmp_path, tiny_reconstructor):
    info = subprocess.run([tool("pdfinfo"), str(converted / "mortara.pdf")], capture_output=True, text=True,
                          check=True).stdout
    width_pt, height_pt = map(float, re.search(r"Page size:\s+([\d.]+) x ([\d.]+) pts", info).groups())
    assert width_pt * 25.4 / 72 == pytest.approx(297.0, abs=0.2)
    assert height_pt * 25.4 / 72 == pytest.approx(210.0, abs=0.2)
    assert "Pages:           1" in info
    # Letter, from the plot command
    out = tmp_path / "letter.pdf"
    assert main(["plot", str(converted / "mortara.dcm"), "--out", str(out), "--paper", "Letter"]) == 0
    info = subprocess.run([tool("pdfinfo"), str(out)], capture_output=True, text=True, check=True).stdout
    width_pt, height_pt = map(float, re.search(r"Page size:\s+([\d.]+) x ([\d.]+) pts", info).groups())
    assert (width_pt, height_pt) == pytest.approx((792.0, 612.0), abs=0.5)


def test_grid_and_calibration_are_true_to_scale(converted, tmp_path):
    """At 254 dpi, 1 mm is 10 px: the thin grid lines repeat every 10 px, the thick ones every
    50 px (5 mm), and the calibration pulse is 100 px (10 mm = 1 mV) high and 50 px (0.2 s) wide."""
    page = rasterise(converted / "mortara.pdf", tmp_path / "page").astype(float)
    red, green = page[..., 0], page[..., 1]
    gridish = (red > 200) & (green < 225)                 # pink and red lines, not white, not traces
    rows = gridish.mean(axis=1)
    cols = gridish.mean(axis=0)
    top, bottom = np.flatnonzero(rows > 0.5)[[0, -1]]     # the grid's full-width lines
    left, right = np.flatnonzero(cols > 0.5)[[0, -1]]
    assert (right - left) == pytest.approx(2600, abs=4) and (bottom - top) == pytest.approx(1600, abs=4)
    profile = gridish[top:bottom, left:right].mean(axis=0)
    peaks, _ = sps.find_peaks(profile, distance=6, height=0.3)
    assert np.median(np.diff(peaks)) == pytest.approx(10.0, abs=0.2)
    darker = (green < 170) & (red > 180)                  # the 5 mm lines only
    thick = darker[top:bottom, left:right].mean(axis=0)
    thick_peaks, _ = sps.find_peaks(thick, distance=30, height=0.3)
    assert np.median(np.diff(thick_peaks)) == pytest.approx(50.0, abs=0.3)
    # the first row's calibration pulse: its rising edge lies 1.5-2.5 mm from the grid's left
    # edge, its top runs from 2 to 7 mm
    black = page.sum(axis=2) < 150
    rising = np.flatnonzero(black[top:top + 400, left + 15:left + 25].any(axis=1))
    assert (rising[-1] - rising[0]) == pytest.approx(100, abs=5)
    top_line = np.flatnonzero(black[top + rising[0] + 1, left:left + 100])
    assert (top_line[-1] - top_line[0]) == pytest.approx(50, abs=5)


def test_text_layer_has_leads_banner_model_and_patient(converted):
    text = pdf_text(converted / "mortara.pdf")
    tokens = text.split()
    for lead in LEADS_12:
        assert lead in tokens, lead
    assert BANNER in text
    meta = json.loads((converted / "mortara.json").read_text())
    assert meta["model_version"] in text
    assert "Anonymous" in text and "642341" in text                      # from the cart's object
    assert "2013-01-25" in text and "Mortara" in text and "1000 Hz" in text
    assert "I  measured" in text or "I measured" in text
    assert text.count(" AI") >= 11                                       # every other lead marked AI
    assert "Signal quality of lead I" in text
    npy_text = pdf_text(converted / "ptbxl180.pdf")
    assert "Patient: unknown" in npy_text and "500 Hz" in npy_text


def test_ai_leads_are_drawn_in_their_own_colour(converted, tmp_path):
    page = rasterise(converted / "mortara.pdf", tmp_path / "page", dpi=100)
    blue = np.array([int(AI_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    near_blue = (np.abs(page.astype(int) - blue).sum(axis=2) < 60)
    near_black = page.sum(axis=2) < 90
    assert near_blue.sum() > 2000 and near_black.sum() > 2000


def test_pdf_object_is_valid_references_its_sources_and_holds_the_page(converted):
    pdf_dcm = converted / "mortara.report.dcm"
    assert dciodvfy_errors(pdf_dcm) == []
    ds = dcmread(pdf_dcm)
    waveform = dcmread(converted / "mortara.dcm")
    source = dcmread(converted.parent / "in" / "mortara.dcm") if (converted.parent / "in").exists() else None
    assert ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert read_pdf_dicom(ds) == (converted / "mortara.pdf").read_bytes()
    assert ds.StudyInstanceUID == waveform.StudyInstanceUID and ds.PatientID == waveform.PatientID
    assert ds.SeriesInstanceUID != waveform.SeriesInstanceUID
    assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.DocumentTitle
    referenced = {item.ReferencedSOPInstanceUID for item in ds.SourceInstanceSequence}
    assert waveform.SOPInstanceUID in referenced
    assert waveform.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID in referenced   # the cart's ECG
    assert any("NOT FOR DIAGNOSIS" in item.ContributionDescription for item in ds.ContributingEquipmentSequence)
    del source
    assert dciodvfy_errors(converted / "ptbxl180.report.dcm") == []


def test_replay_gives_the_same_instances(converted, shared_data, tiny_reconstructor, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(shared_data / MORTARA, inp / "mortara.dcm")
    convert_folder(inp, tmp_path / "again", tiny_reconstructor, output_format="dicom", report_paper="A4")
    first, second = dcmread(converted / "mortara.report.dcm"), dcmread(tmp_path / "again" / "mortara.report.dcm")
    assert first.SOPInstanceUID == second.SOPInstanceUID and first.SeriesInstanceUID == second.SeriesInstanceUID
    assert read_pdf_dicom(first) == read_pdf_dicom(second)      # the page itself is reproducible


def test_plot_from_npy_and_from_dcm(converted, tmp_path):
    png = tmp_path / "from_npy.png"
    assert main(["plot", str(converted / "ptbxl180.npy"), "--out", str(png), "--dpi", "100"]) == 0
    width, height = Image.open(png).size
    assert width == pytest.approx(297 / 25.4 * 100, abs=1) and height == pytest.approx(210 / 25.4 * 100, abs=1)
    pdf = tmp_path / "from_dcm.pdf"
    assert main(["plot", str(converted / "mortara.dcm"), "--out", str(pdf)]) == 0
    text = pdf_text(pdf)
    assert "Anonymous" in text and "Mortara" in text and BANNER in text
    meta = json.loads((converted / "mortara.json").read_text())
    sigma_v1 = meta["sigma_uv"]["V1"] / 1000
    assert f"V1 AI σ {sigma_v1:.2f} mV".replace(" ", "") in text.replace(" ", "")   # σ read back from DICOM
    assert main(["plot", str(converted / "nothing.npy")]) == 2


def test_header_and_pdf_object_take_the_patient_from_a_npy_sidecar(converted):
    text = pdf_text(converted / "kardia.pdf")
    assert "Doe, Jane" in text and "MRN-0042" in text
    assert "2024-05-01 10:15:02" in text and "AliveCor KardiaMobile" in text
    ds = dcmread(converted / "kardia.report.dcm")
    assert ds.PatientID == "MRN-0042" and ds.StudyInstanceUID == SIDECAR["StudyInstanceUID"]
    assert ds.StudyInstanceUID == dcmread(converted / "kardia.dcm").StudyInstanceUID
    assert dciodvfy_errors(converted / "kardia.report.dcm") == []
    unknown = dcmread(converted / "ptbxl180.report.dcm")        # no sidecar: marked as unknown patient
    assert unknown.PatientName == "UNKNOWN" and unknown.PatientID == dcmread(converted / "ptbxl180.dcm").PatientID


# -- issue 20 item 6: a page that never misleads --------------------------------------------------
def test_plot_of_a_carts_own_ecg_draws_it_as_recorded_not_as_ai(shared_data, tmp_path, capsys):
    """`ecg-dicom plot` on a cart's DICOM ECG drew its 11 recorded leads blue, "AI σ n/a"."""
    from ecg_dicom.report.page import RECORDED_BANNER

    pdf = tmp_path / "cart.pdf"
    assert main(["plot", str(shared_data / MORTARA), "--out", str(pdf)]) == 0
    assert "is a recorded 12-lead ECG, not a result of ours" in capsys.readouterr().err
    text = pdf_text(pdf)
    assert RECORDED_BANNER in text and BANNER not in text
    assert " AI" not in text and "σ" not in text and "Nothing on this page was reconstructed" in text
    page = rasterise(pdf, tmp_path / "cart", dpi=100)
    blue = np.array([int(AI_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(page.astype(int) - blue).sum(axis=2) < 60).sum() == 0      # nothing drawn as AI


def _tall_result(tmp_path, shared_data, tiny_reconstructor, r_mv: float | None = None) -> Path:
    """PTB-XL 00299 (R ≈ 3.6 mV in lead I) converted; ``r_mv``: lead I scaled to that R height."""
    inp = tmp_path / "in"
    inp.mkdir()
    rec = read_wfdb_record(shared_data / "ecg12" / "ptbxl" / "records500" / "00000" / "00299_hr.hea")
    lead = rec.leads[0] if r_mv is None else rec.leads[0] * (r_mv * 1000 / rec.leads[0].max())
    np.save(inp / "tall.npy", lead.astype(np.float32))
    (inp / "tall.json").write_text(json.dumps({"fs": 500}))
    convert_folder(inp, tmp_path / "out", tiny_reconstructor, report_paper="A4")
    return tmp_path / "out" / "tall.pdf"


def test_tall_complexes_are_drawn_at_half_gain_said_on_the_page(tmp_path, shared_data, tiny_reconstructor):
    pdf = _tall_result(tmp_path, shared_data, tiny_reconstructor)
    text = pdf_text(pdf)
    assert re.search(r"HALF GAIN: 5 mm/mV \(complexes up to 3\.[5-8] mV", text) and "5 mm/mV (HALF GAIN)" in text
    # the calibration pulse shows the gain: 1 mV = 5 mm (50 px at 254 dpi)
    page = rasterise(pdf, tmp_path / "page").astype(float)
    gridish = (page[..., 0] > 200) & (page[..., 1] < 225)
    top = np.flatnonzero(gridish.mean(axis=1) > 0.5)[0]
    left = np.flatnonzero(gridish.mean(axis=0) > 0.5)[0]
    black = page.sum(axis=2) < 150
    rising = np.flatnonzero(black[top:top + 400, left + 15:left + 25].any(axis=1))
    assert (rising[-1] - rising[0]) == pytest.approx(50, abs=5)


def test_a_complex_too_tall_even_at_half_gain_stays_in_its_own_row(tmp_path, shared_data, tiny_reconstructor):
    """Lead I scaled to R = 9 mV: at 5 mm/mV its rhythm strip would run 45 mm up across the
    III / aVF / V3 / V6 row. Clipped at its row, as a cart does: no black in that row's traces."""
    pdf = _tall_result(tmp_path, shared_data, tiny_reconstructor, r_mv=9.0)
    page = rasterise(pdf, tmp_path / "page").astype(float)
    gridish = (page[..., 0] > 200) & (page[..., 1] < 225)
    top = np.flatnonzero(gridish.mean(axis=1) > 0.5)[0]
    left = np.flatnonzero(gridish.mean(axis=0) > 0.5)[0]
    black = page.sum(axis=2) < 150
    row3 = black[top + 805:top + 1195, left + 120:left + 2600]   # 3rd row, past its calibration pulse
    for c in (1, 2, 3):                                         # less its column markers (black, ±3 mm)
        row3[:, c * 625 - 30:c * 625 - 10] = False
    assert row3.sum() == 0
    assert black[top + 1215:top + 1595, left + 120:left + 2600].sum() > 500    # the strip itself is drawn


def test_a_long_record_says_which_10_s_it_shows_and_the_heart_rate_is_printed(tmp_path, shared_data,
                                                                              tiny_reconstructor):
    inp = tmp_path / "in"
    inp.mkdir()
    rec = read_wfdb_record(shared_data / "ecg12" / "ptb" / "s0010_re.hea")
    np.save(inp / "long.npy", rec.leads[0].astype(np.float32))
    (inp / "long.json").write_text(json.dumps({"fs": 1000}))
    convert_folder(inp, tmp_path / "out", tiny_reconstructor, report_paper="A4")
    text = pdf_text(tmp_path / "out" / "long.pdf")
    assert "Duration: 38.4 s (this page: 0–10 s of 38.4 s)" in text
    assert "rhythm strip, 0–10 s of 38.4 s" in text
    hr = json.loads((tmp_path / "out" / "long.json").read_text())["quality"]["measures"]["heart_rate_bpm"]
    assert f"Heart rate: {hr:.0f} bpm, RR regular" in text and "lead I, 52 beats in 38.4 s" in text


def test_lead_and_sigma_labels_are_at_least_7_px_tall_at_60_dpi(tmp_path, shared_data):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ecg_dicom.report import ReportData
    from ecg_dicom.report.page import draw_page

    rec = read_wfdb_record(shared_data / "ecg12" / "ptbxl" / "records500" / "00000" / "00180_hr.hea")
    fig = draw_page(ReportData(rec.leads, rec.fs, "I", "m", "v", sigma_uv={"V1": 120.0}))
    fig.set_dpi(60)
    renderer = FigureCanvasAgg(fig).get_renderer()
    [label] = [t for t in fig.axes[0].texts if t.get_text().startswith("V1  AI  σ")]
    assert label.get_window_extent(renderer).height >= 7


# -- the page's text: core fonts where they encode it, an embedded font for the rest ----------------
def _words(pdf: Path) -> list[tuple[str, float, float, float, float]]:
    """(word, xMin, xMax, yMin, yMax) in pt from the top left of each word pdftotext finds, in
    reading order."""
    html = subprocess.run([tool("pdftotext"), "-bbox", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    return [(w, float(x0), float(x1), float(y0), float(y1)) for x0, y0, x1, y1, w in
            re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', html)]


def _fonts(pdf: Path) -> dict[str, str]:
    """Font name (subset prefix dropped) -> its "emb" column ("yes"/"no"), from pdffonts."""
    lines = subprocess.run([tool("pdffonts"), str(pdf)], capture_output=True, text=True, check=True).stdout
    fonts = {}
    for line in lines.splitlines()[2:]:
        name, rest = line.split(maxsplit=1)
        fonts[name.split("+")[-1]] = re.search(r"\s(yes|no)\s+(yes|no)\s+(yes|no)\s", f" {rest} ").group(1)
    return fonts


def test_a_cyrillic_patient_name_is_embedded_and_searchable_latin_text_in_a_core_font(tmp_path, shared_data):
    """The core fonts (Helvetica, not embedded) encode WinAnsi only: the Cyrillic name is
    drawn in DejaVu Sans, embedded, and read back by pdftotext with the rest of its line."""
    from ecg_dicom.report import ReportData, render

    rec = read_wfdb_record(shared_data / "ecg12" / "ptbxl" / "records500" / "00000" / "00180_hr.hea")
    data = ReportData(rec.leads, rec.fs, "I", "m", "v", header={"PatientName": "Иванов^Иван", "PatientID": "X-7"},
                      sigma_uv={"V1": 120.0})
    pdf = tmp_path / "page.pdf"
    pdf.write_bytes(render(data, "pdf"))
    text = pdf_text(pdf)
    assert re.search(r"Patient: Иванов, Иван\s+ID: X-7", text), text[:300]
    assert BANNER in text and "V1 AI σ 0.12 mV" in " ".join(text.split())
    fonts = _fonts(pdf)
    assert fonts.get("DejaVuSans") == "yes" and fonts.get("Helvetica") == "no", fonts
    # drawn, not only in the text layer: ink where the name stands (a "?" or an empty box would
    # be far less), as much as the same name in Latin letters gets
    page = rasterise(pdf, tmp_path / "page", dpi=144).sum(axis=2) < 300    # 2 px per pt

    def ink(word: str, words) -> float:
        _, x0, x1, y0, y1 = next(w for w in words if w[0] == word)
        return page[int(2 * y0):int(2 * y1) + 1, int(2 * x0):int(2 * x1) + 1].sum()

    cyrillic = ink("Иванов", _words(pdf))
    latin = tmp_path / "latin.pdf"
    data.header["PatientName"] = "Ivanov^Ivan"
    latin.write_bytes(render(data, "pdf"))
    assert "Patient: Ivanov, Ivan" in pdf_text(latin)
    page = rasterise(latin, tmp_path / "latin", dpi=144).sum(axis=2) < 300
    assert cyrillic > 0.7 * ink("Ivanov,", _words(latin)) > 50
    # a CJK name: DejaVu has no glyphs for it (matplotlib draws boxes from its last-resort font,
    # as it did before), but the text layer holds it (pdftotext reads those tall boxes as a
    # line of their own)
    data.header["PatientName"] = "王^小明"
    (tmp_path / "cjk.pdf").write_bytes(render(data, "pdf"))
    cjk = pdf_text(tmp_path / "cjk.pdf")
    assert "王" in cjk and "小明" in cjk and "Patient:" in cjk


def test_a_run_in_another_font_starts_where_the_text_before_it_ends(converted):
    """A lead label is Helvetica "V1  AI  ", DejaVu "σ", Helvetica " 0.09 mV": each run starts
    where the one before ends as drawn (Helvetica's widths without kerning, which the PDF does
    not apply), so the gaps are the spaces the text holds: two before σ, one after."""
    space = 0.278 * 9.0                                                   # Helvetica's space at 9 pt
    words = _words(converted / "mortara.pdf")
    sigmas = [k for k, word in enumerate(words) if word[0] == "σ" and words[k + 2][0] == "mV"]   # "σ 0.09 mV"
    assert len(sigmas) == 11
    for k in sigmas:
        (_, _, before, *_), (_, start, end, *_), (_, after, *_) = words[k - 1], words[k], words[k + 1]
        assert start - before == pytest.approx(2 * space, abs=0.15), words[k - 2:k + 2]   # "calc.  σ": kerned, 0.5 pt less
        assert after - end == pytest.approx(space, abs=0.15)
    legend = next(k for k, word in enumerate(words) if word[0].startswith("σ") and words[k - 1][0].endswith("ger)."))
    assert words[legend][1] - words[legend - 1][2] == pytest.approx(2 * 0.278 * 6.8, abs=0.15)  # 0.9 mm off if kerned
