"""What may reach the log: one formatter for the whole service.

Rules (README, "Security"):

* Nothing from the wire is logged unescaped: every log line (ours, pydicom's, pynetdicom's,
  Python warnings) passes :class:`SafeFormatter`, which turns control and non-printable
  characters into ``\\xNN`` escapes, so a value holding a newline cannot forge a line.
* Nothing that could hold patient data is logged at all. Our own messages mark values read
  from an input with :func:`wire` (``«...»``); reason files keep the escaped value, the log
  shows only a short hash of it (``«#3fa2c81b»``), enough to match two lines. Messages of
  the libraries we use may quote values they failed to parse: every quoted span in them is
  replaced by its hash as well. Exceptions of unknown origin are logged by type and
  traceback, their message hashed.
* UIDs are logged as :func:`uid_hash`. One hash everywhere (:func:`digest` of the value
  itself): a UID a library quotes (``'#5dbaedc7'``), our marked value (``«#5dbaedc7»``) and
  our ``uid#5dbaedc7`` name the same value with the same 8 hex digits.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import re
import sys
import traceback
import warnings
from contextlib import contextmanager
from typing import Iterator

WIRE_OPEN, WIRE_CLOSE = "\u00ab", "\u00bb"  # « »
_WIRE_SPAN = re.compile(f"{WIRE_OPEN}[^{WIRE_CLOSE}]*{WIRE_CLOSE}")
# quoted spans in third-party messages: 'x', "x", b'x' (values pydicom failed to parse, ...)
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
_OURS = "ecg_dicom"
MAX_WIRE_CHARS = 64
MAX_LINE_CHARS = 2000
TRACEBACK_HEADER = "Traceback (most recent call last):"


def digest(value: object, n: int = 8) -> str:
    """First ``n`` hex digits of the sha256 of ``str(value)``."""
    return hashlib.sha256(str(value).encode("utf-8", "surrogateescape")).hexdigest()[:n]


def uid_hash(uid: object) -> str:
    """How a UID appears in logs: ``uid#<8 hex>`` (the README's promise: no UID verbatim)."""
    return f"uid#{digest(uid)}"


def escape(text: object, limit: int | None = None) -> str:
    """``text`` with every non-printable character as an escape (``\\n``, ``\\x00``, ...),
    cut to ``limit`` characters (with '…') when given. Printable non-ASCII is kept."""
    s = str(text)
    out = s if s.isprintable() else "".join(c if c.isprintable() else _escape_char(c) for c in s)
    if limit is not None and len(out) > limit:
        out = out[: limit - 1] + "\u2026"
    return out.replace(WIRE_OPEN, "<").replace(WIRE_CLOSE, ">")


def _escape_char(c: str) -> str:
    code = ord(c)
    if c in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def wire(value: object, limit: int = MAX_WIRE_CHARS) -> str:
    """Mark a value that came from an input (a label, a UID, a parser's message) inside a
    message: escaped and cut for reason files, hashed by the log formatter."""
    return f"{WIRE_OPEN}{escape(value, limit)}{WIRE_CLOSE}"


def redact(message: str, third_party: bool = False) -> str:
    """The log form of ``message``: marked wire values (and, for ``third_party`` messages,
    every quoted span) replaced by their hash; then escaped and cut to one line."""
    message = _WIRE_SPAN.sub(lambda m: f"{WIRE_OPEN}#{digest(m.group(0)[1:-1])}{WIRE_CLOSE}", message)
    if third_party:
        message = _QUOTED.sub(lambda m: f"'#{digest(_unquoted(m.group(0)))}'", message)
    return escape(message, MAX_LINE_CHARS)


def _unquoted(span: str) -> str:
    """The value a quoted span stands for (``'1.2.3'`` -> ``1.2.3``, escapes decoded as Python
    reads them, ``b'..'`` decoded), so it hashes as the same value does elsewhere."""
    try:
        value = ast.literal_eval(span)  # a string or bytes literal only: nothing is run
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = span[span.index(span[-1]) + 1:-1]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return str(value)


def strip_wire(message: str) -> str:
    """A reason as it goes into a reason file: the marks removed, values kept (escaped)."""
    return escape(message.replace(WIRE_OPEN, "'").replace(WIRE_CLOSE, "'"), MAX_LINE_CHARS)


class SafeFormatter(logging.Formatter):
    """Formats a record as one line: message redacted (see :func:`redact`); an exception
    as its type, hashed message and the traceback's frames (our code, not input data)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        third_party = not record.name.startswith(_OURS)
        saved = record.message
        record.message = redact(saved, third_party)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved

    def formatException(self, ei) -> str:  # noqa: N802
        """``Traceback (most recent call last):``, the frames, and the exception's type with its
        message hashed (the header as Python writes it, so ``grep Traceback`` finds every one)."""
        exc_type, exc, tb = ei
        frames = "".join(traceback.format_tb(tb)).rstrip("\n")
        name = getattr(exc_type, "__name__", "Exception")
        text = escape(f"{frames}\n{name}: (message withheld, #{digest(exc)})").replace("\\n", "\n")
        return f"{TRACEBACK_HEADER}\n{text}"

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return escape(stack_info).replace("\\n", "\n")


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def install(level: str = "INFO", stream=None, fmt: str = FORMAT) -> logging.Handler:
    """Make :class:`SafeFormatter` (with ``fmt``) the formatter of every root handler (adding a
    stderr one if there is none), and route Python warnings (pydicom's own) through logging."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(stream))
    for handler in root.handlers:
        handler.setFormatter(SafeFormatter(fmt))
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; keep its own warnings and errors only
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom logs each of its warnings and also raises it with warnings.warn: keep one copy,
    # the warnings one, as a (redacted) record of the "py.warnings" logger
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.showwarning = _log_warning
    return root.handlers[0]


@contextmanager
def routed(prefix: str, stream=None, level: str = "WARNING") -> Iterator[logging.Handler]:
    """For a command (``convert``): while inside, every log record at ``level`` or above and
    every Python warning (pydicom's) goes to ``stream`` (stderr) as one :class:`SafeFormatter`
    line ``<prefix>: <message>``, as ``serve`` logs them; all is put back afterwards."""
    root = logging.getLogger()
    saved = root.level, warnings.showwarning
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(SafeFormatter(f"{prefix}: %(message)s"))
    handler.setLevel(level.upper())
    # pydicom logs each of its warnings and raises it with warnings.warn: keep the latter
    handler.addFilter(lambda record: not (record.name.split(".")[0] == "pydicom"
                                          and record.levelno < logging.ERROR))
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, handler.level))
    warnings.showwarning = _log_warning
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        warnings.showwarning = saved[1]


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """warnings.showwarning: one log line, the warning's category and text (no source line)."""
    logging.getLogger("py.warnings").warning("%s: %s", getattr(category, "__name__", "Warning"), message)
