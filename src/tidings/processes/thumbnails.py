"""``thumbnails``: a small preview of every image asset, with Pillow."""

from __future__ import annotations

import warnings
from typing import Any

from PIL import Image

from tidings.processes.work import Work

_EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


def run(work: Work) -> dict[str, Any]:
    """Write ``<file id>.<ext>`` per image into ``out_dir``; unreadable images are skipped.

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
            with warnings.catch_warnings():
                # A huge image is a skipped image, not a crash of the whole process.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file.disk_path) as source:
                    source.draft("RGB", (params.size, params.size))
                    image: Image.Image = source
                    image.thumbnail((params.size, params.size))
                    if params.format == "jpeg" and image.mode not in ("RGB", "L"):
                        image = image.convert("RGB")
                    image.save(work.out_dir / name, format=params.format.upper())
                    width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError, Warning) as exc:
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
