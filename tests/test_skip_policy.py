"""The skip policy (tests/skip_policy.py) in generated pytest sessions: under COVE_STRICT_SKIPS=1 a
skip whose reason the expected-skips table does not list fails the run; a listed one passes; without
the variable every skip passes, as it does for a developer's local `pytest`."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SKIPS = """
import pytest

def test_runs():
    assert True

def test_needs_the_widget():
    pytest.skip("the widget is absent: install it beside the repo")
"""
MODULE_SKIP = """
import pytest

pytest.importorskip("a_module_that_is_not_installed", reason="the gadget SDK is not installed")

def test_uses_the_gadget():
    assert True
"""
LISTED = """
[[skip]]
pattern = "widget is absent"
why = "no widget exists for this platform; it is tested on the widget machine"
"""


def run(pytester: pytest.Pytester, tests: str, table: str = "") -> pytest.RunResult:
    """One generated session with the policy plugin and its own expected-skips table."""
    pytester.makeini("[pytest]\nexpected_skips = expected_skips.toml\n")
    pytester.makefile(".toml", expected_skips=table)
    pytester.makepyfile(test_generated=tests)
    return pytester.runpytest("-p", "skip_policy", "-p", "no:cacheprovider")


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv("COVE_STRICT_SKIPS", "1")


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.delenv("COVE_STRICT_SKIPS", raising=False)


def test_an_unlisted_skip_fails_a_strict_run_and_says_why(pytester, strict):
    result = run(pytester, SKIPS)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=1)  # the tests themselves passed: the policy failed the run
    result.stdout.fnmatch_lines(
        [
            "*unexpected skips (COVE_STRICT_SKIPS=1): the run fails*",
            "1 skipped: the widget is absent: install it beside the repo",
            "*test_generated.py::test_needs_the_widget*",
            "*list it in *expected_skips.toml with a `pattern` and `why`*",
        ]
    )


def test_a_module_skipped_at_collection_counts_too(pytester, strict):
    result = run(pytester, MODULE_SKIP)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unexpected skips*", "1 skipped: the gadget SDK is not installed"])


def test_a_listed_skip_passes_a_strict_run_with_its_reason(pytester, strict):
    result = run(pytester, SKIPS, LISTED)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*expected skips*", "1 x no widget exists for this platform*"])
    result.stdout.no_fnmatch_line("*unexpected skips*")


@pytest.mark.parametrize("table", ["", LISTED], ids=["unlisted", "listed"])
def test_without_the_variable_every_skip_passes(pytester, lenient, table):
    result = run(pytester, SKIPS, table)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.no_fnmatch_line("*unexpected skips*")


def test_failures_keep_their_status_and_xfails_are_not_skips(pytester, strict):
    failing = SKIPS + "\ndef test_fails():\n    assert False\n"
    assert run(pytester, failing, LISTED).ret == pytest.ExitCode.TESTS_FAILED
    xfail = "import pytest\n\n@pytest.mark.xfail(reason='a known bug')\ndef test_bug():\n    assert False\n"
    result = run(pytester, xfail)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(xfailed=1)


def test_an_entry_without_a_reason_is_refused(pytester, strict):
    result = run(pytester, SKIPS, '[[skip]]\npattern = "widget"\nwhy = ""\n')
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*skip 1 needs a non-empty `pattern` and `why`*"])


def test_the_suites_table_is_valid_and_every_entry_gives_a_reason():
    from skip_policy import DEFAULT_TABLE, load_table

    assert DEFAULT_TABLE.is_file()
    assert all(entry.why for entry in load_table(DEFAULT_TABLE))
