"""File paths as the database stores them: text that maps back to exactly one path on disk.

A Linux file name is bytes. The stored text keeps every character of a UTF-8 name as it is, except these, which
become backslash escapes: the backslash itself (``\\\\``), a byte that is not UTF-8 (``\\xff``), a control
character (``\\x0a`` for a newline, ``\\x1b`` for ESC) and any other character Python does not call printable
(``\\u202e``, the right-to-left override that can disguise a name). So the stored text is one printable line, a
name holding a literal ``\\xff`` (four characters) never shares its text with a name holding the byte 0xff, and
:func:`to_fs` gives back the very path. (The text before this scheme escaped undecodable bytes the same way but
left backslashes and controls alone; :func:`to_fs` reads a backslash that starts no escape as itself, so those
paths still resolve.)
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def to_stored(path: str | bytes | os.PathLike) -> str:
    """The stored text of a path (``str`` paths carry undecodable bytes as surrogates, as ``os.fsdecode`` makes
    them)."""
    text = os.fsdecode(path)
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape carries it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not char.isprintable():  # C1 controls, bidi overrides, zero-width and other invisible characters
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def to_fs(stored: str) -> str:
    """The path on disk of a stored text, as ``os.fsdecode`` would give it (open() and os.stat() take it)."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(stored):
        raw += stored[position:match.start()].encode("utf-8", "surrogateescape")
        escape = match.group(1)
        if escape == "\\":
            raw += b"\\"
        elif escape[0] == "x":
            raw.append(int(escape[1:], 16))
        else:
            raw += chr(int(escape[1:], 16)).encode("utf-8", "surrogatepass")
        position = match.end()
    raw += stored[position:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(raw))
