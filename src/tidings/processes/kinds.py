"""The kinds of process: their parameters, and the blocking work each one does.

A kind's work is a plain function run in a worker thread: it gets a
:class:`~tidings.processes.work.Work` (the files, where to write output, a progress to
report to and check for cancellation) and returns the JSON result. It never touches the
database or the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tidings.processes import export, thumbnails, verify
from tidings.processes.work import Work


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None, max_length=1024, description="only files in this folder and below"
    )


class ExportParams(Params):
    compression: Literal["stored", "deflated"] = "stored"


class VerifyParams(Params):
    pass


class ThumbnailParams(Params):
    size: int = Field(default=256, ge=16, le=1024, description="longest side, pixels")
    format: Literal["png", "webp", "jpeg"] = "png"


class ExternalParams(BaseModel):
    """Free-form: whatever the external worker wants to show. Kept small."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    params: type[BaseModel]
    run: Callable[[Work], Any] | None  # None: driven from outside (``external``)
    artefact: str | None = None  # the file ``GET …/result`` serves, inside out_dir

    @property
    def external(self) -> bool:
        return self.run is None


KINDS: dict[str, Kind] = {
    "export": Kind("export", ExportParams, export.run, artefact=export.ARCHIVE),
    "verify": Kind("verify", VerifyParams, verify.run),
    "thumbnails": Kind("thumbnails", ThumbnailParams, thumbnails.run),
    "external": Kind("external", ExternalParams, None),
}
