"""Content types: what an upload declares, what a download may claim, and asset types."""

from __future__ import annotations

import mimetypes
import re
from pathlib import PurePosixPath
from urllib.parse import quote

MAX_CONTENT_TYPE_LENGTH = 255  # the ``files.content_type`` column
# RFC 6838 restricted names: ``type/subtype`` from letters, digits and ``!#$&^_.+-``.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")

ASSET_TYPES = ("image", "video", "audio", "document", "model", "archive", "other")

_EXTENSIONS = {
    "model": {
        ".obj",
        ".fbx",
        ".gltf",
        ".glb",
        ".stl",
        ".ply",
        ".dae",
        ".3ds",
        ".blend",
        ".usd",
        ".usdz",
        ".usda",
        ".usdc",
        ".abc",
        ".step",
        ".stp",
        ".iges",
        ".igs",
        ".3mf",
    },
    "archive": {
        ".zip",
        ".tar",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".7z",
        ".rar",
        ".zst",
        ".tbz2",
        ".txz",
    },
    "document": {
        ".pdf",
        ".doc",
        ".docx",
        ".odt",
        ".rtf",
        ".txt",
        ".md",
        ".csv",
        ".xls",
        ".xlsx",
        ".ods",
        ".ppt",
        ".pptx",
        ".odp",
        ".json",
        ".xml",
        ".html",
        ".htm",
        ".epub",
        ".tex",
    },
    "image": {
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".svg",
        ".heic",
        ".avif",
        ".ico",
        ".exr",
        ".hdr",
        ".psd",
    },
    "video": {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv"},
    "audio": {".mp3", ".wav", ".flac", ".ogg", ".oga", ".m4a", ".aac", ".opus", ".aiff"},
}
_DOCUMENT_TYPES = {
    "application/pdf",
    "application/msword",
    "application/rtf",
    "application/json",
    "application/xml",
    "application/epub+zip",
}
_ARCHIVE_TYPES = {
    "application/zip",
    "application/x-tar",
    "application/gzip",
    "application/x-7z-compressed",
    "application/x-bzip2",
    "application/x-xz",
    "application/vnd.rar",
    "application/zstd",
}


class InvalidContentType(ValueError):
    """An upload's declared Content-Type that cannot be stored; the message says why."""


def content_type_for(name: str, declared: str | None) -> str:
    """The declared type unless it is missing or generic; then a guess from the name.

    Raises :class:`InvalidContentType` for a declared value longer than 255 characters
    or one that is not ``type/subtype``: stored as given, it would fail the database
    (PostgreSQL enforces the column's length) or mislead a later download.
    """
    declared = declared or ""
    if len(declared) > MAX_CONTENT_TYPE_LENGTH:
        raise InvalidContentType(
            f"the file's content type is longer than {MAX_CONTENT_TYPE_LENGTH} characters"
        )
    declared = declared.split(";")[0].strip().lower()
    if declared and not _MEDIA_TYPE.fullmatch(declared):
        raise InvalidContentType("the file's content type is not a type/subtype media type")
    if declared and declared != "application/octet-stream":
        return declared
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


# Types a download may carry as they are: what a browser shows without running anything.
# Everything else (HTML, SVG, XML, JavaScript …) is served as application/octet-stream.
_SAFE_TYPES = {"application/pdf", "text/plain", "application/json", "application/zip"}
_SAFE_MAJORS = {"image", "audio", "video"}


def served_type(content_type: str) -> str:
    """The Content-Type a download is served with: ``content_type`` if it is on the
    allow-list (images except SVG, PDF, plain text, JSON, zip, audio, video), otherwise
    ``application/octet-stream``."""
    essence = content_type.split(";")[0].strip().lower()
    if _MEDIA_TYPE.fullmatch(essence):
        major, _, subtype = essence.partition("/")
        if essence in _SAFE_TYPES or (major in _SAFE_MAJORS and "svg" not in subtype):
            return essence
    return "application/octet-stream"


def download_headers(filename: str) -> dict[str, str]:
    """Headers of every file download: always an attachment, never sniffed, and sandboxed
    should a browser render it anyway. ``filename*`` carries the exact name (RFC 6266,
    RFC 8187); ``filename`` an ASCII stand-in for old clients."""
    fallback = (
        "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename) or "download"
    )
    disposition = (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
    )
    return {
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }


def asset_type(name: str, content_type: str) -> str:
    ext = PurePosixPath(name).suffix.lower()
    for kind, extensions in _EXTENSIONS.items():
        if kind == "model" and ext in extensions:
            return kind
    major = content_type.split("/")[0]
    if major in ("image", "video", "audio"):
        return major
    if major.startswith("model"):
        return "model"
    if content_type in _ARCHIVE_TYPES:
        return "archive"
    if major == "text" or content_type in _DOCUMENT_TYPES or "officedocument" in content_type:
        return "document"
    for kind, extensions in _EXTENSIONS.items():
        if ext in extensions:
            return kind
    return "other"
