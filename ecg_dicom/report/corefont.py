"""Texts a PDF shows in a core font (Helvetica) where it can: one string each, from AFM metrics.

matplotlib's PDF backend places every character of a TrueType or Type 3 text itself, in
Python (about 50 µs a character, measured and drawn); a text in one of the 14 PDF core fonts
is written as one string with the font's name and the reader's own copy draws it, so
nothing is embedded and the page takes a fraction of the time. The core fonts encode
WinAnsi (cp1252) only: a character outside it (σ, a Cyrillic patient name) must stay in an
embedded font. :func:`add_text` therefore cuts a left-aligned text into runs: WinAnsi runs
in Helvetica, the others in the figure's font (DejaVu Sans, Type 3), each run starting where
the previous one ends (an :class:`~matplotlib.text.Annotation` at the right edge of the run
before it, measured at draw time, on the same baseline), so the line reads as one. Widths
are Helvetica's AFM widths without its kerning pairs, because the PDF backend writes the
string without them (``_unkerned``): laid out as drawn, so centred and right-aligned texts
and the boxes behind the lead labels sit where they should.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import groupby

import matplotlib
from matplotlib.text import Annotation, Text

CORE_FAMILY = "Helvetica"


def core_font_fits(text: str) -> bool:
    """Whether every character of ``text`` is in the core fonts' WinAnsi (cp1252) encoding."""
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _core_kwargs(text: str, kwargs: dict) -> dict:
    if not core_font_fits(text):
        raise ValueError(f"not in the core fonts' encoding (cp1252): {text!r}")
    weight = kwargs.get("weight", kwargs.get("fontweight", "normal"))
    kwargs = {k: v for k, v in kwargs.items() if k != "fontweight"}
    # what Helvetica's AFM calls its regular weight (else findfont warns at every page)
    return {**kwargs, "family": CORE_FAMILY, "weight": "medium" if weight in ("normal", 400) else weight}


@contextmanager
def _use14corefonts(flag: bool) -> Iterator[None]:
    """``rc_context({"pdf.use14corefonts": flag})`` without its copy of every rcParam (0.3 ms,
    and a page asks about 100 times)."""
    before = matplotlib.rcParams["pdf.use14corefonts"]
    matplotlib.rcParams["pdf.use14corefonts"] = flag
    try:
        yield
    finally:
        matplotlib.rcParams["pdf.use14corefonts"] = before


# (character, hash of its FontProperties) -> advance width in points: a PDF renderer's AFM
# widths depend on nothing else (not its dpi); a few hundred entries at most on these pages
_CHAR_WIDTHS: dict[tuple[str, int], float] = {}


@contextmanager
def _unkerned(renderer) -> Iterator[None]:
    """Text widths on ``renderer`` without kerning: the AFM metrics add Helvetica's kerning
    pairs, but the PDF backend writes a core-font string without them, so a reader draws it
    wider (by up to 1.3 mm on a long header line). Shadows the renderer's own method on this
    instance while a core-font text is measured or drawn (matplotlib's metrics cache looks
    the method up on each call)."""
    if renderer is None or "get_text_width_height_descent" in vars(renderer):
        yield
        return
    measure = renderer.get_text_width_height_descent

    def width_height_descent(text, prop, ismath):
        width, height, descent = measure(text, prop, ismath)
        if not ismath and len(text) > 1:
            font = hash(prop)
            width = 0.0
            for char in text:
                if (char, font) not in _CHAR_WIDTHS:
                    _CHAR_WIDTHS[char, font] = measure(char, prop, False)[0]
                width += _CHAR_WIDTHS[char, font]
        return width, height, descent

    renderer.get_text_width_height_descent = width_height_descent
    try:
        yield
    finally:
        del renderer.get_text_width_height_descent


class _FontMode:
    """Mixin: measured (extent, alignment, the box behind it) and drawn with
    ``pdf.use14corefonts`` set to ``_core``: from Helvetica's AFM metrics (without kerning,
    as drawn) or from the embedded font's own, whatever artist asks (a run measures the one
    before it)."""

    _core: bool

    @contextmanager
    def _mode(self, renderer) -> Iterator[None]:
        with _use14corefonts(self._core):
            if not self._core:
                yield
                return
            with _unkerned(renderer):
                yield

    def draw(self, renderer) -> None:
        with self._mode(renderer):
            super().draw(renderer)

    def get_window_extent(self, renderer=None, *args, **kwargs):
        with self._mode(renderer):
            return super().get_window_extent(renderer, *args, **kwargs)


class _EmbeddedText(_FontMode, Text):
    _core = False


class _EmbeddedAnnotation(_FontMode, Annotation):
    _core = False


class CoreFontText(_FontMode, Text):
    """A Text in Helvetica, for a PDF renderer only and for a ``text`` that
    :func:`core_font_fits` (anything else would be written as ``?``)."""

    _core = True

    def __init__(self, x: float, y: float, text: str, **kwargs) -> None:
        super().__init__(x, y, text, **_core_kwargs(text, kwargs))


class CoreFontAnnotation(_FontMode, Annotation):
    """:class:`CoreFontText` as an Annotation (placed relative to another artist)."""

    _core = True

    def __init__(self, text: str, xy, **kwargs) -> None:
        super().__init__(text, xy, **_core_kwargs(text, kwargs))


def add_text(ax, x: float, y: float, text: str, core_fonts: bool, **kwargs) -> Text:
    """``ax.text(x, y, text, **kwargs)``; with ``core_fonts`` (a PDF page) its WinAnsi runs in
    Helvetica: all of it when it fits, else, when it is left-aligned, run by run (the others
    in the figure's font), else (centred or right-aligned: rare, and kept simple) none of it.
    Returns the first run's artist."""
    runs = [("".join(chars), fits) for fits, chars in groupby(text, core_font_fits)] if core_fonts else []
    ha = kwargs.get("ha", kwargs.get("horizontalalignment", "left"))
    if not runs or runs == [(text, False)] or (len(runs) > 1 and ha != "left"):
        return ax.text(x, y, text, **kwargs)
    first, fits = runs[0]
    artist = ax.add_artist((CoreFontText if fits else _EmbeddedText)(x, y, first, **kwargs))
    previous = artist
    follow = {k: v for k, v in kwargs.items() if k not in ("va", "verticalalignment")} | {"va": "baseline"}
    for run, fits in runs[1:]:
        kind = CoreFontAnnotation if fits else _EmbeddedAnnotation
        previous = ax.add_artist(kind(run, (0, 0), xycoords=_after(previous), **follow))
    return artist


def _after(run: _FontMode):
    """Where the run after ``run`` starts, for an Annotation's ``xycoords``: at draw time, a
    translation to the right end of ``run`` on its baseline (its box's bottom plus the
    descent matplotlib laid its last line out with: ``Text._get_layout``, private but the
    only place that says it; the box alone cannot, as each font pads it differently)."""
    from matplotlib.transforms import Affine2D

    def at(renderer) -> Affine2D:
        box = run.get_window_extent(renderer)
        with run._mode(renderer):
            _, lines, _ = run._get_layout(renderer)  # per line: (text, (width, ascent, descent), xy)
        descent = lines[-1][1][2]
        return Affine2D().translate(box.x1, box.y0 + descent)

    return at


def cache_core_font_metrics() -> None:
    """Have the PDF backend reuse its cached metrics of a core font when it writes the font's
    entry into a file. matplotlib 3.11's ``PdfFile._write_afm_font`` parses the whole AFM
    file (kerning pairs included) just to read the font's name, for Helvetica and
    Helvetica-Bold on every page: ~20 ms of a ~110 ms page. Its metrics lookups use an
    LRU-cached parse of the same file (``_cached_get_afm_from_fname``); this points the
    write at it. Does nothing where either name is missing (another matplotlib)."""
    from matplotlib.backends import _backend_pdf_ps, backend_pdf

    cached = getattr(_backend_pdf_ps, "_cached_get_afm_from_fname", None)
    if cached is None or not hasattr(backend_pdf, "AFM") or getattr(backend_pdf.AFM, "_ecg_dicom_cached", False):
        return

    def cached_afm(fh):  # backend_pdf calls AFM(fh) on an open AFM file only there
        return cached(fh.name)

    cached_afm._ecg_dicom_cached = True
    backend_pdf.AFM = cached_afm
