"""The documented protocol tables match the ones the server and clients use."""

from __future__ import annotations

import re
from pathlib import Path

from tidings import Settings
from tidings.codes import CLOSE_CODES, ERROR_CODES

PROTOCOL_MD = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def test_every_close_code_is_documented_with_its_name_and_advice() -> None:
    for code, info in CLOSE_CODES.items():
        row = re.search(rf"^\| {int(code)} \| (\w+) \|.*\| (yes|no) \|$", PROTOCOL_MD, re.M)
        assert row, f"close code {int(code)} missing from docs/protocol.md"
        assert row.group(1) == info.name
        assert row.group(2) == ("yes" if info.reconnect else "no")


def test_every_error_code_is_documented() -> None:
    for code in ERROR_CODES:
        assert re.search(rf"^\| `{code}` \|", PROTOCOL_MD, re.M), code


def test_every_server_message_type_has_an_example() -> None:
    types = {
        "connection.established", "subscribed", "unsubscribed", "pong", "error",
        "project.created", "project.updated", "project.deleted", "file.uploaded",
        "file.deleted", "process.started", "process.progress", "process.completed",
        "system.heartbeat",
    }  # fmt: skip
    for kind in types:
        assert f'{{"type": "{kind}"' in PROTOCOL_MD, kind


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TIDINGS_{name.upper()}`" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"
