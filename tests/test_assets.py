"""``assets.py``: asset types from content type and extension."""

from __future__ import annotations

import pytest

from tidings.assets import ASSET_TYPES, asset_type, content_type_for


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
