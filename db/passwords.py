"""Reviewer passwords: argon2id hashes (salted, parameters inside the hash), never stored in clear, and the password
policy of NIST SP 800-63B.

The policy (:func:`check_password`): at least 8 characters for reviewers and 12 for admins, counted as Unicode
code points after NFKC normalisation, and at most 1024; not a commonly used or breached password (one of the
30,000 of the ``zxcvbn`` package's list, compared case-insensitively, also with digits or symbols added at
either end); not made of the user name or the service's name plus too little else; not repetitive or sequential
("aaaaaaaa", "12345678", "qwertyuiop12"). There are no composition rules: no digit, capital or symbol is demanded.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from itertools import pairwise

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 8  # reviewers; NIST SP 800-63B's least for any password (rev. 4: 15 if it is the only factor)
MIN_ADMIN_PASSWORD_LENGTH = 12  # an admin can change accounts and promote models: more is at stake
MAX_PASSWORD_LENGTH = 1024  # long passphrases are welcome; only absurd lengths are refused, to bound hashing work
SERVICE_NAMES = ("cxr review", "cxrreview", "cxr-review", "cxr_review")
# Characters that follow each other predictably: the alphabet, digits and keyboard rows (QWERTY, QWERTZ, AZERTY).
SEQUENCES = ("abcdefghijklmnopqrstuvwxyz", "0123456789", "`1234567890-=", "qwertyuiop[]", "asdfghjkl;'", "zxcvbnm,./",
             "qwertzuiop", "yxcvbnm", "azertyuiop", "qsdfghjklm", "wxcvbn")
RUN_LENGTH = 4  # refused when the password's predictable runs are this long on average ("abcd1234", "aaaa2222")
_AFFIXES = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$", re.DOTALL)


class PasswordPolicyError(ValueError):
    """A password the policy refuses; the message says what is needed."""


def check_password(password: str, *, role: str, username: str) -> None:
    """Raise PasswordPolicyError unless ``password`` is acceptable for an account of ``role`` named ``username``.

    The user name and the service's name count for nothing: what is left without them must pass on its own."""
    normalised = unicodedata.normalize("NFKC", password)
    minimum = min_password_length(role)
    _check_length(normalised, minimum)
    folded = normalised.casefold()
    _check_not_common(folded)
    _check_not_predictable(folded)
    rest, words = _without_context_words(folded, username)
    if words:
        if len(rest) < minimum:
            raise PasswordPolicyError(f"password is mostly the user name or the service's name "
                                      f"({', '.join(map(repr, words))}): without it, it has {len(rest)} characters, "
                                      f"need at least {minimum}")
        _check_not_common(rest)
        _check_not_predictable(rest)


def min_password_length(role: str) -> int:
    return MIN_ADMIN_PASSWORD_LENGTH if role == "admin" else MIN_PASSWORD_LENGTH


def hash_password(password: str) -> str:
    """Only hashes: the policy is :func:`check_password`, applied where a person chooses a password."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def common_passwords() -> frozenset[str]:
    """The common-password list, lower case (loaded at first use: it takes a few tens of milliseconds)."""
    return _common_passwords()


@functools.cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(word.casefold() for word in FREQUENCY_LISTS["passwords"])


def _check_length(password: str, minimum: int) -> None:
    if len(password) < minimum:
        raise PasswordPolicyError(f"password too short: {len(password)} characters, need at least {minimum} "
                                  "(a few unrelated words make a good one)")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"password too long: {len(password)} characters, at most {MAX_PASSWORD_LENGTH}")


def _check_not_common(folded: str) -> None:
    common = common_passwords()
    core = _AFFIXES.match(folded).group(1)
    if folded in common or core in common:
        raise PasswordPolicyError("password is on a list of commonly used or breached passwords: choose another")


def _check_not_predictable(folded: str) -> None:
    if _is_repeated_unit(folded) or _run_count(folded) * RUN_LENGTH <= len(folded):
        raise PasswordPolicyError("password is repetitive or sequential (like 'aaaa', '1234', 'qwerty' or 'abcabc'): "
                                  "choose one that is harder to guess")


def _is_repeated_unit(text: str) -> bool:
    """Whether ``text`` is a shorter string said again, as in "abcabcab" or "passpass"."""
    return any(text == (text[:size] * (len(text) // size + 1))[:len(text)] for size in range(1, len(text) // 2 + 1))


def _run_count(text: str) -> int:
    """How many runs ``text`` falls into, a run being characters that each repeat or neighbour the previous one."""
    return 1 + sum(1 for before, after in pairwise(text) if not _predictable(before, after))


def _predictable(before: str, after: str) -> bool:
    return before == after or after in _NEIGHBOURS.get(before, "")


def _neighbours() -> dict[str, str]:
    found: dict[str, set[str]] = {}
    for sequence in SEQUENCES:
        for first, second in pairwise(sequence):
            found.setdefault(first, set()).add(second)
            found.setdefault(second, set()).add(first)
    return {char: "".join(sorted(chars)) for char, chars in found.items()}


_NEIGHBOURS = _neighbours()


def _without_context_words(folded: str, username: str) -> tuple[str, list[str]]:
    """``folded`` without the user name and the service's names, and which of them it contained."""
    found = []
    for word in sorted({username.casefold(), *SERVICE_NAMES} - {""}, key=len, reverse=True):  # "x" must not break "cxr"
        if word in folded:
            found.append(word)
            folded = folded.replace(word, "")
    return folded, found
