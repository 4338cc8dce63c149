"""Session-wide settings of the test suite."""

from __future__ import annotations

import os

# train.precision=auto stays fp32 on every CPU (no bf16 probe), here and in the processes the tests start, so the
# suite's figures do not depend on the machine; tests of the choice itself remove it (monkeypatch.delenv).
os.environ.setdefault("LONGSHORT_CPU_BF16", "0")
