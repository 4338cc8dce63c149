"""Fixtures of the report tests: fake run directories (see report_fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fakes import write_all_diagnostics, write_basic_run

from longshort.report.html import build_report


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    """A classifier run with every diagnostics file."""
    return write_all_diagnostics(write_basic_run(tmp_path / "run"))


@pytest.fixture
def bare_run(tmp_path: Path) -> Path:
    """A classifier run without any diagnostics (what training wrote before diagnostics existed)."""
    return write_basic_run(tmp_path / "bare")


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a run with every diagnostics file, built once for all the tests that only read it."""
    run = write_all_diagnostics(write_basic_run(tmp_path_factory.mktemp("full") / "run"))
    path = build_report(run)
    assert path == run / "report.html"
    return path
