"""``assets.py``: asset types from content type and extension."""

from __future__ import annotations

import pytest

from tidings.assets import (
    ASSET_TYPES,
    InvalidContentType,
    asset_type,
    content_type_for,
    download_headers,
    served_type,
)


@pytest.mark.parametrize(
    ("name", "declared", "expected"),
    [
        ("a.png", "image/png", "image/png"),
        ("a.png", "IMAGE/PNG; charset=x", "image/png"),
        ("a.png", None, "image/png"),
        ("a.png", "", "image/png"),
        ("a.png", "application/octet-stream", "image/png"),
        ("a.unknownext", None, "application/octet-stream"),
        ("noext", "text/plain", "text/plain"),
    ],
)
def test_content_type_for(name: str, declared: str | None, expected: str) -> None:
    assert content_type_for(name, declared) == expected


@pytest.mark.parametrize(
    ("name", "ctype", "expected"),
    [
        ("a.png", "image/png", "image"),
        ("a.bin", "image/webp", "image"),
        ("a.mp4", "video/mp4", "video"),
        ("a.mov", "application/octet-stream", "video"),
        ("a.flac", "audio/flac", "audio"),
        ("a.ogg", "application/octet-stream", "audio"),
        # 3D formats often arrive as JSON, octet-stream or text: the extension wins.
        ("scene.gltf", "model/gltf+json", "model"),
        ("scene.gltf", "application/json", "model"),
        ("mesh.OBJ", "text/plain", "model"),
        ("mesh.stl", "application/octet-stream", "model"),
        ("a.bin", "model/vnd.usdz+zip", "model"),
        ("a.zip", "application/zip", "archive"),
        ("a.tar.gz", "application/gzip", "archive"),
        ("a.7z", "application/octet-stream", "archive"),
        ("a.pdf", "application/pdf", "document"),
        ("a.txt", "text/plain", "document"),
        (
            "a.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "document",
        ),
        ("a.csv", "application/octet-stream", "document"),
        ("a.bin", "application/octet-stream", "other"),
        ("noext", "application/x-custom", "other"),
    ],
)
def test_asset_type(name: str, ctype: str, expected: str) -> None:
    assert asset_type(name, ctype) == expected
    assert expected in ASSET_TYPES


@pytest.mark.parametrize(
    ("declared", "why"),
    [
        ("image/" + "x" * 250, "longer than 255"),
        ("text/plain; " + "x" * 250, "longer than 255"),
        ("text/plain\x01", "type/subtype"),
        ("text/pl ain", "type/subtype"),
        ("nonsense", "type/subtype"),
        ("a/b/c", "type/subtype"),
    ],
)
def test_content_type_for_refuses_what_cannot_be_stored(declared: str, why: str) -> None:
    with pytest.raises(InvalidContentType, match=why):
        content_type_for("a.bin", declared)


@pytest.mark.parametrize(
    ("stored", "served"),
    [
        ("image/png", "image/png"),
        ("image/jpeg", "image/jpeg"),
        ("image/webp", "image/webp"),
        ("image/svg+xml", "application/octet-stream"),
        ("IMAGE/SVG+XML", "application/octet-stream"),
        ("application/pdf", "application/pdf"),
        ("text/plain", "text/plain"),
        ("application/json", "application/json"),
        ("application/zip", "application/zip"),
        ("audio/flac", "audio/flac"),
        ("video/webm", "video/webm"),
        ("text/html", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("text/xml", "application/octet-stream"),
        ("text/javascript", "application/octet-stream"),
        ("application/x-shockwave-flash", "application/octet-stream"),
        ("multipart/x-mixed-replace", "application/octet-stream"),
        ("text/markdown", "application/octet-stream"),
        ("image/png\r\nSet-Cookie: x", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_served_type_is_an_allow_list(stored: str, served: str) -> None:
    assert served_type(stored) == served


@pytest.mark.parametrize(
    ("name", "fallback", "encoded"),
    [
        ("a.txt", "a.txt", "a.txt"),
        ('say "hi".txt', "say _hi_.txt", "say%20%22hi%22.txt"),
        ("back\\slash", "back_slash", "back%5Cslash"),
        ("100%.txt", "100_.txt", "100%25.txt"),
        ("café.txt", "caf_.txt", "caf%C3%A9.txt"),
        ("a;b=c", "a;b=c", "a%3Bb%3Dc"),
        ("", "download", ""),
    ],
)
def test_download_headers(name: str, fallback: str, encoded: str) -> None:
    assert download_headers(name) == {
        "Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
