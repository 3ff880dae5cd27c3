"""XML as the vendor formats (GE MUSE, Philips Sierra, HL7 aECG) need it, parsed safely.

Every parse goes through :func:`parse_xml`: ``defusedxml`` refuses entity declarations
(billion laughs, quadratic blow-up) and external entities or DTDs (never fetched), the
caller has refused the file by size before (:func:`ecg_dicom.limits.check_input_bytes`),
and every failure is an :class:`InputError` with a one-line reason. Namespaces are
stripped from element tags after the parse, so readers look elements up by local name.
:func:`sniff_root` recognises a format from the first bytes of a file (root element and
its default namespace), without parsing it.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from pathlib import Path
from typing import Iterator
from xml.etree.ElementTree import Element

from ecg_dicom.errors import InputError
from ecg_dicom.logsafe import wire

SNIFF_BYTES = 4096
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_ROOT = re.compile(r"<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)([^>]*)")
_XMLNS = re.compile(r"""\bxmlns\s*=\s*["']([^"']*)["']""")
_SKIP = re.compile(r"\s*(<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(\[.*?\])?\s*>)", re.S)


def _decode_head(head: bytes) -> str | None:
    """The first bytes of a file as text, by its byte-order mark (UTF-8 or UTF-16), else as
    UTF-16 when every other byte is zero (no BOM), else as Latin-1 (ASCII-compatible)."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return head[len(bom):].decode(codec, "ignore")
    if head[:2] == b"<\x00":
        return head.decode("utf-16-le", "ignore")
    if head[:2] == b"\x00<":
        return head.decode("utf-16-be", "ignore")
    return head.decode("latin-1")


def sniff_root(path: str | Path) -> tuple[str, str] | None:
    """(root element's local name, its default namespace or "") of an XML file, read from its
    first bytes only; None when the file does not start like XML."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return None
    text = _decode_head(head)
    if text is None:
        return None
    pos = 0
    while True:  # the declaration, comments and a DOCTYPE may come before the root
        skipped = _SKIP.match(text, pos)
        if skipped is None:
            break
        pos = skipped.end()
    text = text[pos:].lstrip()
    match = _ROOT.match(text)
    if match is None:
        return None
    namespace = _XMLNS.search(match.group(3))
    return match.group(2), namespace.group(1) if namespace else ""


def parse_xml(data: bytes, what: str) -> Element:
    """Parse ``data`` (a whole file, already refused by size if too large) with defusedxml;
    namespaces stripped from the tags. Raises InputError naming ``what`` (the format)."""
    import defusedxml
    from defusedxml.ElementTree import ParseError, fromstring

    try:
        root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.EntitiesForbidden:
        raise InputError(f"{what}: the XML declares entities (refused: entity expansion and external "
                         "entities are never processed)") from None
    except (defusedxml.ExternalReferenceForbidden, defusedxml.DTDForbidden, defusedxml.NotSupportedError):
        raise InputError(f"{what}: the XML refers to an external resource (refused, never fetched)") from None
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise InputError(f"{what}: not well-formed XML (line {line}, column {column})") from None
    except (ValueError, LookupError, RecursionError, MemoryError) as exc:  # an unknown encoding name...
        raise InputError(f"{what}: not readable XML ({type(exc).__name__})") from None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.rsplit("}", 1)[1]
    return root


def text_of(element: Element | None, path: str) -> str:
    """The stripped text of ``element``'s first descendant at ``path`` ("" when absent)."""
    if element is None:
        return ""
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def children(element: Element, tag: str) -> Iterator[Element]:
    """Direct children of ``element`` with local name ``tag``."""
    return (child for child in element if child.tag == tag)


def number(text: str | None, what: str, positive: bool = False) -> float:
    """``text`` as a finite float (``positive``: > 0), else InputError naming ``what``."""
    if text is None or not str(text).strip():
        raise InputError(f"{what} is missing")
    try:
        value = float(str(text).strip())
    except ValueError:
        raise InputError(f"{what} is not a number ({wire(text, 24)})") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise InputError(f"{what} must be a {'positive ' if positive else ''}finite number, got {wire(text, 24)}")
    return value


def sample_rate(text: str | None, what: str) -> float:
    """A sampling rate in Hz from the file: a positive number up to 100 kHz (a sane header;
    the lead check then asks for 100–2000 Hz)."""
    fs = number(text, what, positive=True)
    if fs > 100_000:
        raise InputError(f"{what} of {fs:g} Hz is not a plausible ECG sampling rate")
    return fs


def b64(text: str | None, what: str, max_bytes: int) -> bytes:
    """Base64 ``text`` (line breaks and spaces allowed) decoded, at most ``max_bytes``;
    InputError naming ``what`` when it is not base64."""
    if text is None:
        raise InputError(f"{what}: no data")
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > max_bytes:
        raise InputError(f"{what}: more data than the header declares")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64") from None
