"""Fail unless the last test run's branch coverage reaches the floors below.

``make test`` runs it after pytest. The pure modules (no I/O, no clock) are tested
directly, table-style, and must stay fully covered: add a module to ``FULLY_COVERED``
when it joins them.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import coverage

PACKAGE_FLOOR = 90.0  # percent of statements and branches of src/tidings

FULLY_COVERED = [
    "src/tidings/messages.py",
    "src/tidings/delivery.py",
    "src/tidings/resume.py",
    "src/tidings/outqueue.py",
    "src/tidings/frames.py",
    "src/tidings/codes.py",
    "src/tidings/processes/state.py",
    "src/tidings/batches.py",
    "src/tidings/stopping.py",
    "src/tidings/outages.py",
]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    cov = coverage.Coverage(
        data_file=str(root / ".coverage"), config_file=str(root / "pyproject.toml")
    )
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(report))
        data = json.loads(report.read_text())
    files = {
        str(Path(name).resolve().relative_to(root)): info for name, info in data["files"].items()
    }
    failures = []
    total = data["totals"]["percent_covered"]
    if total < PACKAGE_FLOOR:
        failures.append(f"src/tidings: {total:.1f} % < {PACKAGE_FLOOR:g} %")
    for module in FULLY_COVERED:
        info = files.get(module)
        if info is None:
            failures.append(f"{module}: not measured (no test imported it?)")
            continue
        summary = info["summary"]
        if summary["missing_lines"] or summary["missing_branches"]:
            branches = [f"{a}->{b if b > 0 else 'exit'}" for a, b in info["missing_branches"]]
            failures.append(
                f"{module}: {summary['percent_covered']:.1f} % < 100 %"
                f" (lines {info['missing_lines']}, branches {branches})"
            )
    for failure in failures:
        print(f"coverage below the floor: {failure}", file=sys.stderr)
    if not failures:
        print(
            f"coverage: {total:.1f} % of src/tidings (floor {PACKAGE_FLOOR:g} %);"
            f" {len(FULLY_COVERED)} pure modules at 100 %"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
