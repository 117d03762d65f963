"""``thumbnails``: a small preview of every image asset, with Pillow."""

from __future__ import annotations

from typing import Any

from PIL import Image

from tidings.processes.work import Work

_EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
# The formats Pillow may open here: common raster images, decoded by Pillow itself. Any
# other (EPS would run Ghostscript, for one) is a skipped file, whatever its extension.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# Larger images are skipped before a pixel is decoded: a 50-megapixel RGB image already
# takes 150 MB to decode, and a few hundred bytes of PNG can claim far more.
MAX_PIXELS = 50_000_000


class TooLarge(Exception):
    """An image whose header claims more than :data:`MAX_PIXELS` pixels."""


def run(work: Work) -> dict[str, Any]:
    """Write ``<file id>.<ext>`` per image into ``out_dir``; any image that cannot be read
    (unsupported format, corrupt, or over :data:`MAX_PIXELS`) is listed as skipped with
    the reason, and the others are still made.

    Progress counts the source bytes of each image once it is done (Pillow reads a file
    in one go, so there is no finer grain). Non-image files are ignored.
    """
    params = work.params
    progress = work.progress
    images = [f for f in work.files if f.asset_type == "image"]
    progress.total = sum(f.size for f in images)
    made: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    ext = _EXTENSIONS[params.format]
    for index, file in enumerate(images, 1):
        progress.message = f"Thumbnail of {file.location} ({index} of {len(images)})"
        progress.check()
        name = f"{file.id}.{ext}"
        try:
            # Image.open reads only the header; the size check comes before any decoding.
            # Pillow's own bomb check (a warning, then an error, past its global limit)
            # still applies: both are caught below, without touching its global settings
            # or the process-wide warning filters.
            with Image.open(file.disk_path, formats=FORMATS) as source:
                width, height = source.size
                if width * height > MAX_PIXELS:
                    raise TooLarge(f"image has {width}x{height} pixels, over {MAX_PIXELS}")
                source.draft("RGB", (params.size, params.size))
                image: Image.Image = source
                image.thumbnail((params.size, params.size))
                if params.format == "jpeg" and image.mode not in ("RGB", "L"):
                    image = image.convert("RGB")
                image.save(work.out_dir / name, format=params.format.upper())
                width, height = image.size
        except (
            OSError,
            ValueError,
            TooLarge,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as exc:
            skipped.append({"id": file.id, "path": file.location, "reason": str(exc)[:200]})
        else:
            made.append(
                {
                    "id": file.id,
                    "path": file.location,
                    "thumbnail": name,
                    "width": width,
                    "height": height,
                }
            )
        progress.advance(file.size)
    return {"thumbnails": made, "skipped": skipped}
