"""What the storage service (``cxr-receive``) accepts, and how it writes an instance.

An instance is checked before a byte of it is written: its SOP Class must be the one negotiated, its UIDs well
formed (they become path parts), its pixel data present and, uncompressed, as long as its header says. A refusal
is a DIMSE status and a short reason that names no patient.

Each instance is written to ``FOLDER/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` through a hidden ``.part`` file in
the same folder (a name the scorer's discovery skips), fsynced, renamed over any earlier copy of the same instance
(the last copy sent wins, as a PACS resending a corrected instance expects), and the folder fsynced.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring.imaging.pixel_data import DEFLATED, NATIVE_SYNTAXES, SUPPORTED_TRANSFER_SYNTAXES
from scoring.imaging.scope import DX_FOR_PROCESSING, RADIOGRAPH_MODALITIES

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
# Digitised films and many exports (the SIIM-ACR chest films among them) are Secondary Capture with Modality CR
# or DX; any other Secondary Capture is refused by its Modality.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STORAGE_CLASSES = (CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE)
# The syntaxes the scorer decodes (scoring.imaging is the one source), in a fixed order for negotiation.
TRANSFER_SYNTAXES = tuple(sorted(SUPPORTED_TRANSFER_SYNTAXES))

SUCCESS = 0x0000
NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported (a Secondary Capture that is not a radiograph)
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000
CANNOT_DECODE = 0xC210  # pynetdicom's "cannot understand: dataset could not be decoded"

MAX_UID_LENGTH = 64
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class Outcome:
    """A C-STORE's answer: the DIMSE status and a short reason for the log and the Error Comment. The reason never
    holds a value from the dataset other than a SOP Class or transfer syntax UID."""

    status: int
    reason: str

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.outcome = Outcome(status, reason)


@dataclass(frozen=True)
class Instance:
    study_uid: str
    sop_uid: str

    def path_in(self, folder: Path) -> Path:
        return folder / self.study_uid / f"{self.sop_uid}.dcm"


def is_valid_uid(value: str) -> bool:
    return len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def checked_uid(ds: Any, keyword: str) -> str:
    """The UID as a safe path part: digits and dots only, no empty component, at most 64 characters."""
    value = str(ds.get(keyword) or "").rstrip("\0 ")
    if not value:
        raise Refused(CANNOT_UNDERSTAND, f"{keyword} missing")
    if not is_valid_uid(value):
        raise Refused(CANNOT_UNDERSTAND, f"{keyword} is not a valid UID")
    return value


def check_instance(ds: Any, sop_class: str, sop_instance: str, syntax: str) -> Instance:
    """The instance's place if ``ds`` may be stored; else :class:`Refused`. ``sop_class`` and ``sop_instance`` are
    the C-STORE request's Affected SOP Class and Instance UIDs, ``syntax`` the context's transfer syntax."""
    if checked_uid(ds, "SOPClassUID") != sop_class:
        raise Refused(DOES_NOT_MATCH, f"SOPClassUID differs from the request's {sop_class}")
    if sop_class == SECONDARY_CAPTURE and str(ds.get("Modality") or "").strip().upper() not in RADIOGRAPH_MODALITIES:
        raise Refused(NOT_SUPPORTED, "Secondary Capture that is not a radiograph (Modality not CR or DX)")
    instance = Instance(checked_uid(ds, "StudyInstanceUID"), checked_uid(ds, "SOPInstanceUID"))
    if instance.sop_uid != sop_instance:
        raise Refused(CANNOT_UNDERSTAND, "SOPInstanceUID differs from the request's")
    check_pixel_data(ds, syntax)
    return instance


def check_pixel_data(ds: Any, syntax: str) -> None:
    pixels = ds.get("PixelData")
    if not pixels:
        raise Refused(DOES_NOT_MATCH, "no PixelData")
    if syntax in NATIVE_SYNTAXES or syntax == DEFLATED:
        expected = native_length(ds)
        if len(pixels) < expected:
            raise Refused(DOES_NOT_MATCH, f"PixelData has {len(pixels)} bytes, its header says {expected}")


def native_length(ds: Any) -> int:
    """Bytes of uncompressed pixel data the header describes (1-bit data packed eight pixels to a byte)."""
    try:
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
        pixels *= int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise Refused(DOES_NOT_MATCH, "Rows, Columns or BitsAllocated missing or not a number") from None
    return (pixels * bits + 7) // 8


def write_instance(folder: Path, instance: Instance, data: bytes) -> Path:
    """Write ``data`` (a DICOM file) atomically to its place under ``folder``; raises OSError, leaving no temporary
    file behind."""
    study = folder / instance.study_uid
    if not study.is_dir():
        study.mkdir(exist_ok=True)
        fsync_directory(folder)  # the new study folder's entry must survive a crash too
    final = instance.path_in(folder)
    temporary = study / f".{instance.sop_uid}.{secrets.token_hex(4)}{PART_SUFFIX}"
    try:
        write_synced(temporary, data)
        os.replace(temporary, final)
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_directory(study)
    return final


def write_synced(path: Path, data: bytes) -> None:
    # 0o666 so that the service's umask (systemd UMask=) decides who else may read the images
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    """Remove a temporary file after a failure; the failure, not this, is what the caller reports."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_failure(exc: OSError) -> Outcome:
    """A write the machine refused: "out of resources", so the sender keeps the instance and retries later."""
    name = errno.errorcode.get(exc.errno or 0, "error")
    return Outcome(OUT_OF_RESOURCES, f"cannot write: {name} ({exc.strerror or type(exc).__name__})")
