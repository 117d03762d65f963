"""Classify uploads into the platform's asset types, by content type and extension."""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath

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


def content_type_for(name: str, declared: str | None) -> str:
    """The declared type unless it is missing or generic; then a guess from the name."""
    declared = (declared or "").split(";")[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


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
