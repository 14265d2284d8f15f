"""A skip in CI is a failure unless it is listed as expected, with a reason.

A test that skips because a component is missing (the shared corpus, Debian's chromium, an SDK)
passes silently, so a CI machine that lost the component would stop testing it and stay green. With
``COVE_STRICT_SKIPS=1`` (set by ``scripts/test.sh``, which CI runs) every skip whose reason matches
no entry of the expected-skips table makes the session fail, with a summary of what skipped and why.
Without the variable (a developer's ``pytest``) skips stay lenient.

The table is TOML (``tests/expected_skips.toml``; another file with the ini option
``expected_skips``), one ``[[skip]]`` per acceptable skip::

    [[skip]]
    pattern = "needs a GPU"                 # a regular expression searched in the skip reason
    why = "CI machines have no GPU; the GPU path is tested on the release machine"

Loaded by ``tests/conftest.py`` (``pytest_plugins``); ``tests/test_skip_policy.py`` runs it in
generated test sessions.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

STRICT_ENV = "COVE_STRICT_SKIPS"
DEFAULT_TABLE = Path(__file__).with_name("expected_skips.toml")
_SKIPPED_PREFIX = "Skipped: "  # how pytest words a skip's message in its report


@dataclass(frozen=True)
class ExpectedSkip:
    """A skip CI accepts: a pattern its reason matches, and why the skip is acceptable."""

    pattern: re.Pattern[str]
    why: str


@dataclass(frozen=True)
class Skip:
    nodeid: str  # a test, or a module skipped whole at collection
    reason: str


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def load_table(path: Path) -> list[ExpectedSkip]:
    """The expected skips of `path`; a UsageError for an entry without a valid pattern or a reason.

    A missing file is an empty table: every skip is then unexpected."""
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise pytest.UsageError(f"{path}: not TOML ({err})") from err
    entries = data.get("skip", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise pytest.UsageError(f"{path}: write each expected skip as a [[skip]] table")
    table = []
    for i, entry in enumerate(entries, start=1):
        pattern, why = entry.get("pattern"), entry.get("why")
        if not isinstance(pattern, str) or not pattern or not isinstance(why, str) or not why.strip():
            raise pytest.UsageError(f"{path}: skip {i} needs a non-empty `pattern` and `why` (why it is acceptable)")
        try:
            table.append(ExpectedSkip(re.compile(pattern), why.strip()))
        except re.error as err:
            raise pytest.UsageError(f"{path}: skip {i}: bad pattern {pattern!r} ({err})") from err
    return table


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report gives (pytest stores it as (path, line, "Skipped: reason"))."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return message.removeprefix(_SKIPPED_PREFIX)


class SkipPolicy:
    """Collects every skip of the session; under COVE_STRICT_SKIPS=1 fails it on unexpected ones."""

    def __init__(self, table: list[ExpectedSkip], table_path: Path) -> None:
        self.table = table
        self.table_path = table_path
        self.skips: list[Skip] = []

    def expected(self, skip: Skip) -> ExpectedSkip | None:
        return next((entry for entry in self.table if entry.pattern.search(skip.reason)), None)

    def unexpected(self) -> list[Skip]:
        return [s for s in self.skips if self.expected(s) is None]

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too
            self.skips.append(Skip(report.nodeid, skip_reason(report)))

    # --- hooks ------------------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)  # a module that skips whole (importorskip, allow_module_level)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # Only a run that would otherwise pass is turned into a failure; failures keep their status.
        if strict() and self.unexpected() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not strict() or not self.skips:
            return
        unexpected = self.unexpected()
        expected = [s for s in self.skips if s not in unexpected]
        if expected:
            terminalreporter.section("expected skips")
            for why, count in Counter(self.expected(s).why for s in expected).items():
                terminalreporter.line(f"{count} x {why}")
        if not unexpected:
            return
        terminalreporter.section(f"unexpected skips ({STRICT_ENV}=1): the run fails", red=True)
        by_reason: dict[str, list[str]] = {}
        for skip in unexpected:
            by_reason.setdefault(skip.reason, []).append(skip.nodeid)
        for reason, nodeids in by_reason.items():
            shown = ", ".join(nodeids[:3]) + (f" and {len(nodeids) - 3} more" if len(nodeids) > 3 else "")
            terminalreporter.line(f"{len(nodeids)} skipped: {reason}", red=True)
            terminalreporter.line(f"    {shown}")
        terminalreporter.line(
            "A skip here hides a component CI is meant to test. Provide what the reason names, or, if the "
            f"skip is acceptable, list it in {self.table_path} with a `pattern` and `why`."
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("expected_skips", "TOML table of the skips CI accepts (see tests/skip_policy.py)", default="")


def pytest_configure(config: pytest.Config) -> None:
    configured = config.getini("expected_skips")
    path = (config.rootpath / configured) if configured else DEFAULT_TABLE
    config.pluginmanager.register(SkipPolicy(load_table(path), path), "cove-skip-policy")
