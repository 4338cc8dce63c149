"""benchmarks/gpu_check.sh in its CPU mode (the CI smoke test of the GPU script): the CPU-safe checks run and
pass, the GPU-only timing is marked skipped, the JSON summary is written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_runs_its_cpu_safe_parts_and_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", str(out)], capture_output=True, text=True,
                         timeout=240, env=env)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["mode"] == "cpu" and summary["gpu"] is None
    checks = summary["checks"]
    assert {k: c["status"] for k, c in checks.items()} == {
        "bf16_autocast": "ok", "lstm_paths": "ok", "fsdp_bf16": "ok", "cell_speed": "skipped"}
    assert checks["lstm_paths"]["fused"]["fused_path"] and not checks["lstm_paths"]["custom_layer_norm"]["fused_path"]
    assert checks["fsdp_bf16"]["dtypes"]["lstm"] == ["out:torch.float32", "param:torch.float32"]
    assert "param:torch.bfloat16" in checks["fsdp_bf16"]["dtypes"]["attention"]
