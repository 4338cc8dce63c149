"""docs/python.md runs: every ```python block, in order, in one namespace, in a fresh directory."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "python.md"


def test_every_python_block_of_docs_python_runs(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    out = io.StringIO()
    try:
        for i, code in enumerate(blocks):
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                try:
                    exec(compile(code, f"docs/python.md block {i + 1}", "exec"), namespace)
                except Exception as exc:
                    raise AssertionError(f"docs/python.md block {i + 1} failed: {exc!r}\n{code}") from exc
    finally:
        os.chdir(cwd)
    text = out.getvalue()
    assert "padded array without lengths" in text  # the refusal the page shows
    assert (tmp_path / "runs" / "in-memory" / "data" / "train.npz").is_file()
