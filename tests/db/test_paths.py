"""Paths as the database stores them (db.paths): lossless, one printable line, never two paths in one text."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from db.paths import to_fs, to_stored

# A file name is any bytes but NUL and '/': what a modality, a share or a hostile user can leave in a folder.
NAMES = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\x00", b"").replace(b"/", b"")).filter(bool)


@given(NAMES)
def test_every_path_comes_back_exactly(name):
    path = os.fsdecode(b"/data/day/" + name)
    assert os.fsencode(to_fs(to_stored(path))) == b"/data/day/" + name


@given(NAMES, NAMES)
def test_two_paths_never_share_a_text(first, second):
    if first != second:
        assert to_stored(os.fsdecode(first)) != to_stored(os.fsdecode(second))


@given(NAMES)
def test_the_text_is_one_printable_line(name):
    stored = to_stored(os.fsdecode(name))
    assert stored.isprintable() and "\n" not in stored and stored.encode("utf-8")  # valid UTF-8 for any database


@pytest.mark.parametrize(("name", "stored"), [
    (b"A\xff.png", "A\\xff.png"),  # a byte that is not UTF-8
    (b"A\\xff.png", "A\\\\xff.png"),  # the same four characters, literally: before, both were "A\xff.png"
    (b"line\nbreak.dcm", "line\\x0abreak.dcm"),
    (b"\x1b[31mred.dcm", "\\x1b[31mred.dcm"),
    ("caf\u00e9 \u0085.png".encode(), "caf\u00e9 \\u0085.png"),
    (b"plain name.png", "plain name.png"),
])
def test_the_escapes(name, stored):
    assert to_stored(os.fsdecode(name)) == stored
    assert os.fsencode(to_fs(stored)) == name


def test_text_stored_before_this_scheme_still_resolves():
    # undecodable bytes were escaped the same way; a backslash that starts no escape is itself
    assert os.fsencode(to_fs("day/A\\xff.png")) == b"day/A\xff.png"
    assert to_fs("share\\scan 1.png") == "share\\scan 1.png"
