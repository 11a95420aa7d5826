"""Uploads from the page: bounded bodies, names that are safe to show, archives unpacked safely.

Everything an outsider sends is checked before it is used:
- a request body is read only up to its route's limit (the Content-Length is checked first; a body that lies
  about its length is cut off as it streams), and what is over the limit is read and thrown away, so the
  browser gets the page that says why instead of a reset connection;
- images are decoded by edge/imageio.py's `decode_bgr`, the reader the CLI uses (the 50-megapixel header
  check before decoding; anything else is "not a readable image");
- identity names are refused with a message when they hold markup or control characters;
- a zip is unpacked entry by entry: no absolute paths or `..`, only image files, a bounded count and a bounded
  unpacked size counted while writing (an entry's declared size can lie).
"""

from __future__ import annotations

import shutil
import unicodedata
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from edge.errors import FacegateError
from edge.imageio import IMAGE_SUFFIXES
from edge.store.db import DISPLAY_CONTROLS

MB = 1024 * 1024
DRAIN_LIMIT = 2048 * MB  # beyond this an oversized body is not read to its end: the connection is dropped
MAX_FILES = 2000  # per request (a folder upload of a bulk enrolment)
NAME_FORBIDDEN = frozenset('<>&"\\/`')
MAX_NAME = 200


class UploadError(FacegateError):
    """An upload the page refuses, with the message shown to the user and an HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _TooLarge(Exception):
    pass


async def _drain(request: Request, already: int = 0) -> None:
    seen = already
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break
    except ClientDisconnect:
        pass


async def read_form(request: Request, limit_bytes: int, what: str) -> FormData:
    """The multipart form of `request`, at most `limit_bytes` in all; UploadError (413) beyond that."""
    too_large = UploadError(f"{what} is larger than the limit of {limit_bytes / MB:.0f} MB: nothing was stored",
                            413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        await _drain(request)
        raise too_large
    received = 0

    async def bounded_receive() -> Any:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit_bytes:
                raise _TooLarge
        return message

    bounded = Request(request.scope, bounded_receive)
    try:
        return await bounded.form(max_files=MAX_FILES, max_fields=200, max_part_size=64 * 1024)
    except _TooLarge:
        await _drain(request, received)
        raise too_large from None
    except MultiPartException as exc:
        raise UploadError(f"the form could not be read ({exc})") from None
    except ClientDisconnect:
        raise UploadError("the upload was interrupted: nothing was stored") from None


def files_of(form: FormData, field: str) -> list[UploadFile]:
    """The non-empty files sent in `field` (a browser sends an empty part when no file was chosen)."""
    return [f for f in form.getlist(field) if isinstance(f, UploadFile) and f.filename]


def text_of(form: FormData, field: str, limit: int = 2000) -> str:
    value = form.get(field)
    return value.strip()[:limit] if isinstance(value, str) else ""


def check_person_name(name: str, what: str = "name") -> str:
    """A name for an identity as typed into the page: refused (with the reason) if it holds markup or control
    characters, which would otherwise travel into logs, MQTT events and other pages."""
    name = name.strip()
    if not name:
        raise UploadError(f"the {what} is empty")
    if len(name) > MAX_NAME:
        raise UploadError(f"the {what} is longer than {MAX_NAME} characters")
    bad = sorted({c for c in name if c in NAME_FORBIDDEN or unicodedata.category(c) == "Cc"
                  or c in DISPLAY_CONTROLS})
    if bad:
        shown = " ".join(repr(c)[1:-1] if c.isprintable() else f"U+{ord(c):04X}" for c in bad)
        raise UploadError(f"the {what} {name[:60]!r} contains characters a name may not hold ({shown}): use "
                          f"letters, digits, spaces and . , ' -")
    return name


def _is_image_name(name: str) -> bool:
    p = PurePosixPath(name)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and "__MACOSX" not in p.parts


def _person_and_file(name: str) -> tuple[str, str] | None:
    """(person folder, file name) of an archive entry or a folder upload's relative path, or None when the path
    is unsafe (absolute, `..`) or the file lies in no person's folder."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
        return None
    return p.parts[-2], p.parts[-1]


def unpack_zip(source: Any, dest: Path, limit_bytes: int) -> int:
    """Unpack the images of a zip (a file object) into dest/<person>/<file>; returns how many. Refuses unsafe
    paths, too many entries and an unpacked size over `limit_bytes`."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UploadError("the archive is not a readable zip file: nothing was stored") from None
    with archive:
        entries = [i for i in archive.infolist() if not i.is_dir() and _is_image_name(i.filename)]
        if len(entries) > MAX_FILES * 10:
            raise UploadError(f"the archive holds {len(entries)} images; at most {MAX_FILES * 10} per upload")
        if sum(i.file_size for i in entries) > limit_bytes:
            raise UploadError(f"the archive unpacks to more than {limit_bytes / MB:.0f} MB: nothing was stored")
        written = count = 0
        for info in entries:
            where = _person_and_file(info.filename)
            if where is None:
                if PurePosixPath(info.filename.replace("\\", "/")).is_absolute() or ".." in info.filename:
                    raise UploadError(f"the archive holds an unsafe path ({info.filename[:80]!r}): nothing was "
                                      "stored")
                continue  # an image outside any person's folder
            person, fname = where
            target = dest / check_person_name(person, "folder name") / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limit_bytes:
                            raise UploadError(f"the archive unpacks to more than {limit_bytes / MB:.0f} MB: "
                                              "nothing was stored")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:  # RuntimeError: encrypted entry
                raise UploadError(f"the archive entry {info.filename[:80]!r} cannot be read ({exc.__class__.__name__})"
                                  ": nothing was stored") from None
            count += 1
    return count


async def save_folder(files: Iterable[UploadFile], dest: Path) -> int:
    """A folder chosen in the browser (its files carry their relative paths) into dest/<person>/<file>."""
    count = 0
    for f in files:
        name = f.filename or ""
        if not _is_image_name(name):
            continue
        where = _person_and_file(name)
        if where is None:
            continue
        person, fname = where
        target = dest / check_person_name(person, "folder name") / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        await f.seek(0)
        with open(target, "wb") as out:
            shutil.copyfileobj(f.file, out)
        count += 1
    return count
