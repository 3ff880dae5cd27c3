"""Texts a PDF shows in a core font (Helvetica): one string each, laid out from AFM metrics.

matplotlib's PDF backend places every character of a TrueType or Type 3 text itself, in
Python (about 50 µs a character); a text in one of the 14 PDF core fonts is written as one
string with the font's name and the reader's own copy draws it, so nothing is embedded and
the page takes a fraction of the time. The core fonts encode WinAnsi (cp1252) only: a text
with any other character (σ, a Cyrillic or CJK patient name) must stay in an embedded font
(:func:`core_font_fits` says which).
"""

from __future__ import annotations

import matplotlib
from matplotlib.text import Text

CORE_FAMILY = "Helvetica"


def core_font_fits(text: str) -> bool:
    """Whether every character of ``text`` is in the core fonts' WinAnsi (cp1252) encoding."""
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


class CoreFontText(Text):
    """A :class:`matplotlib.text.Text` in Helvetica that a PDF renderer writes with
    ``pdf.use14corefonts``: its layout (extent, alignment, the box behind it) is measured in
    :meth:`draw` from the same AFM metrics it is drawn with. For PDF only, and only for a
    ``text`` that :func:`core_font_fits` (anything else would be written as ``?``)."""

    def __init__(self, x: float, y: float, text: str, **kwargs) -> None:
        if not core_font_fits(text):
            raise ValueError(f"not in the core fonts' encoding (cp1252): {text!r}")
        if kwargs.get("weight", "normal") in ("normal", 400):
            kwargs["weight"] = "medium"  # what Helvetica's AFM calls its regular weight
        super().__init__(x, y, text, family=CORE_FAMILY, **kwargs)

    def draw(self, renderer) -> None:
        with matplotlib.rc_context({"pdf.use14corefonts": True}):
            super().draw(renderer)

    def get_window_extent(self, renderer=None, dpi=None):
        with matplotlib.rc_context({"pdf.use14corefonts": True}):
            return super().get_window_extent(renderer, dpi)
