"""tidings.d.ts type-checks a sample app (tests/ts/app.ts) with ``tsc --strict``.

TypeScript comes from npm, pinned in tests/ts/package-lock.json (``make test`` installs
it). The sample narrows messages on ``type`` and marks with ``@ts-expect-error`` the
mistakes the declarations must catch, so a declaration that is too loose fails too.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.conftest import IN_CI, TIMEOUT

SAMPLE = Path(__file__).resolve().parent / "ts"
TSC = SAMPLE / "node_modules" / "typescript" / "bin" / "tsc"


def node() -> str:
    """The node executable, with the pinned TypeScript installed; skip (fail under CI) if not."""
    executable = shutil.which("node")
    reason = None
    if executable is None:
        reason = "node is not installed"
    elif not TSC.is_file():
        reason = "tests/ts's packages are not installed (make tests/ts/node_modules)"
    if reason is None:
        assert executable is not None
        return executable
    if IN_CI:
        pytest.fail(f"{reason} (CI=true requires it)")
    pytest.skip(reason)


async def test_the_declarations_type_check_a_sample_app_strictly() -> None:
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(TSC),
        "--project",
        str(SAMPLE / "tsconfig.json"),
        "--strict",
        "--pretty",
        "false",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT * 6)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
