"""The benchmarks' own correctness checks, on small configurations (their timings are never tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dpo_vs_trl_computes_the_same_objective_as_trl(tmp_path: Path) -> None:
    """Same token ids row by row, the same per-sequence log-probs and the same DPO loss as TRL's DPOTrainer on
    one batch, with the policy moved off the reference (so the loss is not log 2 for both)."""
    pytest.importorskip("trl")
    benchmark = _load("dpo_vs_trl")
    small = ["--vocab=512", "--hidden=64", "--layers=2", "--max-length=192", "--max-prompt-words=60"]
    result = benchmark.main([*small, "--examples=16", "--check-only", "--workdir", str(tmp_path)])
    check = result["check"]
    assert check["logps_relative_error"] < 1e-5
    assert check["rlhf_lab_loss"] == pytest.approx(check["trl_loss"], abs=1e-4)
    assert abs(check["trl_loss"] - 0.6931472) > 1e-4  # an informative loss, not the policy == reference value
