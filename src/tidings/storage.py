"""Files on local disk: streamed multipart uploads, safe names, and atomic placement.

Stored files are named by their id under ``<data>/files/<project>/``; user-supplied names
and folder paths live only in the database, so no name can reach outside the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_NAME_LENGTH = 255
# A temp file untouched this long (seconds) is an upload a crash cut off; a younger one may
# be arriving at another node or worker sharing the folder.
LEFTOVER_AGE = 3600
MAX_PATH_LENGTH = 1024
MAX_FORM_FIELD_BYTES = 4096
# Part headers and form fields together, besides the file: without a Content-Length (a
# chunked body) nothing else bounds what a client can make the server hold in memory.
MAX_FORM_OVERHEAD = 64 * 1024


class UploadError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _refused(text: str) -> str | None:
    """Why ``text`` cannot be part of a file's name or folder, or None if it can.

    Control and format characters (Unicode Cc and Cf: NUL, newlines, zero-width and bidi
    overrides …) make a name display as something it is not; ``:`` is a drive or stream
    separator on Windows; a backslash is a separator there too.
    """
    if ":" in text or "\\" in text:
        return "must not contain : or \\"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in text):
        return "must not contain control or format characters (such as bidi overrides)"
    return None


def clean_name(name: str) -> str:
    """A file name in NFC, or UploadError(400) if it could name anything but one file or
    holds a character :func:`_refused` names. Composed and decomposed spellings of one
    name are one name (so the second upload of ``café`` is a conflict)."""
    name = unicodedata.normalize("NFC", name)
    if not name or name in (".", "..") or len(name) > MAX_NAME_LENGTH:
        raise UploadError(400, "file name must be 1-255 characters and not . or ..")
    if "/" in name:
        raise UploadError(400, "file name must not contain slashes")
    why = _refused(name)
    if why:
        raise UploadError(400, f"file name {why}")
    return name


def clean_folder(path: str | None) -> str:
    """Normalise a folder path inside a project to ``/a/b`` form in NFC; refuse traversal
    and what :func:`clean_name` refuses in a name."""
    if path is None or path.strip() == "":
        return "/"
    path = unicodedata.normalize("NFC", path)
    why = _refused(path)
    if why:
        raise UploadError(400, f"path {why}")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UploadError(400, "path must not contain . or .. segments")
    folder = "/" + "/".join(parts)
    if len(folder) > MAX_PATH_LENGTH:
        raise UploadError(400, "path is too long")
    return folder


@dataclass
class Upload:
    """A received upload in a temporary file, not yet placed."""

    temp_path: Path
    name: str | None = None
    declared_type: str | None = None
    folder: str | None = None
    size: int = 0
    sha256: str = ""
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)


class _Part:
    """Headers of the multipart part being parsed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.name: str | None = None


def _discard(out: BinaryIO | None, path: Path) -> None:
    """Close and remove an upload's temp file that will not be used. Closing writes what
    is still buffered, and fails again if writing did (a full disk): the file goes anyway."""
    if out is not None:
        with contextlib.suppress(OSError):
            out.close()
    path.unlink(missing_ok=True)


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the folders; remove the temp files of uploads a crash cut off.

        Other nodes (or workers) may share the folder and be receiving uploads right now:
        only a temp file untouched for :data:`LEFTOVER_AGE` is a leftover."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        before = time.time() - LEFTOVER_AGE
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):  # another node removed it first
                if leftover.stat().st_mtime < before:
                    leftover.unlink()

    def file_path(self, project_id: str, file_id: str) -> Path:
        return self.root / project_id / file_id

    def project_dir(self, project_id: str) -> Path:
        return self.root / project_id

    def new_temp(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    async def receive(
        self, content_type: str, body: AsyncIterator[bytes], max_bytes: int
    ) -> Upload:
        """Stream a multipart body (field ``file``, optional field ``path``) to a temp file.

        The size limit is enforced while streaming (UploadError 413) and the SHA-256 is
        computed on the way. On any failure the temp file is removed before raising.
        """
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise UploadError(415, "expected a multipart/form-data body")
        upload = Upload(self.new_temp())
        out: BinaryIO | None = None
        part = _Part()
        fields: dict[str, bytes] = {}
        error: list[UploadError] = []
        complete = False
        overhead = 0

        def count(n: int) -> None:
            nonlocal overhead
            overhead += n
            if overhead > MAX_FORM_OVERHEAD and not error:
                error.append(UploadError(400, "multipart headers and fields are too large"))

        def on_part_begin() -> None:
            part.reset()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            count(end - start)
            part.field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            count(end - start)
            part.value += data[start:end]

        def on_header_end() -> None:
            part.headers[part.field.lower()] = part.value
            part.field = part.value = b""

        def on_headers_finished() -> None:
            nonlocal out
            _, disp = parse_options_header(part.headers.get(b"content-disposition", b""))
            part.name = disp.get(b"name", b"").decode("utf-8", "replace")
            if part.name == "file":
                if out is not None:
                    error.append(UploadError(400, "only one file per upload"))
                    return
                filename = disp.get(b"filename")
                upload.name = filename.decode("utf-8", "replace") if filename else None
                upload.declared_type = part.headers.get(b"content-type", b"").decode("latin-1")
                out = open(upload.temp_path, "wb")  # noqa: SIM115 - closed below
            else:
                fields[part.name] = b""

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if error:
                return
            chunk = data[start:end]
            if part.name == "file" and out is not None:
                upload.size += len(chunk)
                if upload.size > max_bytes:
                    error.append(UploadError(413, f"file exceeds the {max_bytes}-byte limit"))
                    return
                upload._hash.update(chunk)
                out.write(chunk)
            elif part.name is not None:
                count(len(chunk))
                fields[part.name] += chunk
                if len(fields[part.name]) > MAX_FORM_FIELD_BYTES:
                    error.append(UploadError(400, f"form field {part.name!r} is too long"))

        def on_end() -> None:
            nonlocal complete
            complete = True

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_end": on_end,
            },
        )
        try:
            async for chunk in body:
                parser.write(chunk)
                if error:
                    raise error[0]
            parser.finalize()
            if error:
                raise error[0]
            # finalize() does not check that the closing boundary came: a body cut short
            # (a chunked upload ended early) would otherwise be stored truncated.
            if not complete:
                raise UploadError(400, "incomplete multipart body")
            if out is None:
                raise UploadError(400, "missing form field: file")
            out.flush()
            # A disk flush takes milliseconds: in a worker thread, not on the event loop.
            await asyncio.to_thread(os.fsync, out.fileno())
        except FormParserError as exc:
            _discard(out, upload.temp_path)
            raise UploadError(400, "malformed multipart body") from exc
        except BaseException:
            _discard(out, upload.temp_path)
            raise
        out.close()
        upload.sha256 = upload._hash.hexdigest()
        if "path" in fields:
            upload.folder = fields["path"].decode("utf-8", "replace")
        return upload

    def place(self, upload: Upload, project_id: str, file_id: str) -> Path:
        target = self.file_path(project_id, file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.temp_path, target)
        return target

    def remove_project(self, project_id: str) -> None:
        shutil.rmtree(self.project_dir(project_id), ignore_errors=True)
