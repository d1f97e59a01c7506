"""notebooks/analyze_runs.ipynb: stored clean, parametrised, and executable headless against a real sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from tests.test_analysis import assert_png
from tests.test_e2e import REPO
from tests.test_multirun_summary import assert_the_multirun_summary

NOTEBOOK = REPO / "notebooks" / "analyze_runs.ipynb"
TINY = (
    "data.source.num_train=64",
    "data.source.num_eval=32",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
)


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_without_outputs() -> None:
    nb = read_notebook()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_notebook_is_parametrised_and_runnable_by_papermill() -> None:
    nb = read_notebook()
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    for name in ("runs_dir", "out_dir", "metric", "parameter"):
        assert f"{name} = " in first.source
    # papermill refuses a notebook without these.
    assert nb.metadata.kernelspec.name == "python3" and nb.metadata.language_info.name == "python"


def execute(parameters: dict[str, str], cwd: Path) -> nbformat.NotebookNode:
    """Run the notebook as papermill would: the parameters as a cell after the tagged one."""
    from nbclient import NotebookClient

    nb = read_notebook()
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    # "python3" resolves to the interpreter running this test (jupyter_client swaps a bare "python" argv
    # for sys.executable); the notebook prints its interpreter, checked below.
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


@pytest.mark.slow
def test_notebook_executes_against_a_beta_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_lab",
            "--multirun",
            "algo.beta=0.05,0.5",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in sweep.iterdir() if p.is_dir()} >= {"0", "1"}
    assert_the_multirun_summary(sweep, result.stdout)  # the same sweep: no second one

    out = tmp_path / "figures"
    nb = execute({"runs_dir": str(sweep), "out_dir": str(out)}, cwd=tmp_path)
    printed = "".join(
        output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert f"python: {sys.executable}" in printed
    assert "2 runs" in printed and "swept parameter: algo.beta" in printed
    for name in ("curves.png", "logps.png", "parameter.png", "objectives.png"):
        assert_png(out / name)
    table = pd.read_csv(out / "objectives.csv")
    assert table["objective"].tolist() == ["dpo"] and table["n"].tolist() == [2]
    assert table["val/rewards/accuracies/low"].notna().all()


@pytest.mark.slow
def test_notebook_executes_against_online_runs(tmp_path: Path) -> None:
    """Two GRPO runs (a beta sweep): reward, completion length and KL curves, and val/reward compared."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_lab",
            "--multirun",
            "algo=grpo",
            "algo.beta=0.0,0.1",
            "data=synthetic_rl",
            "algo.num_generations=2",
            "algo.max_new_tokens=8",
            "algo.reward_functions=[tests.custom_rewards.even_tokens]",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "figures"
    nb = execute({"runs_dir": str(sweep), "out_dir": str(out), "metric": "val/reward"}, cwd=tmp_path)
    printed = "".join(
        output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "2 runs" in printed and "swept parameter: algo.beta" in printed
    for name in ("curves.png", "online.png", "parameter.png", "objectives.png"):
        assert_png(out / name)
    table = pd.read_csv(out / "objectives.csv")
    assert table["objective"].tolist() == ["grpo"] and table["val/reward/low"].notna().all()
    for run_dir in ("0", "1"):
        assert_png(sweep / run_dir / "curves.png")  # the run's own curves: reward, length (and KL)
