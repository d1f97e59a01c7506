"""Local runs as DataFrames: finding run directories, their configs and final metrics, their logged histories,
and a leaderboard directory's tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

RUN_MARKERS = ("summary.json", "metrics.csv")


def is_run_dir(path: Path) -> bool:
    """True if ``path`` holds a run's outputs (``summary.json`` or ``metrics.csv``)."""
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_run_dirs(*paths: str | Path) -> list[Path]:
    """Run directories in ``paths``: each path itself if it is a run, else every run below it (sorted)."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {path}")
        if is_run_dir(path):
            found[path] = None
            continue
        below = {marker.parent for name in RUN_MARKERS for marker in path.rglob(name)}
        for run_dir in sorted(below, key=_natural_key):
            found[run_dir] = None
    return list(found)


def _natural_key(path: Path) -> tuple[Any, ...]:
    # Hydra names sweep jobs 0, 1, ..., 10: sort them as numbers, not strings.
    return tuple(int(part) if part.isdigit() else part for part in path.parts)


def flatten(node: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nested mapping -> ``{"algo.beta": 0.1}``; lists become JSON strings so columns stay hashable."""
    flat: dict[str, Any] = {}

    def visit(mapping: Mapping[str, Any], prefix: str) -> None:
        for name, value in mapping.items():
            key = f"{prefix}{name}"
            if isinstance(value, Mapping) and value:
                visit(value, f"{key}{sep}")
            elif isinstance(value, (list, tuple)):
                flat[key] = json.dumps(list(value))
            else:
                flat[key] = value

    visit(node, "")
    return flat


def _read_yaml(path: Path) -> dict[str, Any]:
    # Plain YAML, not OmegaConf: hydra.yaml holds interpolations that only resolve inside a Hydra app.
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def objective_name(run_dir: Path, config: Mapping[str, Any] | None = None) -> str | None:
    """The run's ``algo`` config name (Hydra's runtime choice), else its pairwise loss's name
    (``rlhf_lab.losses.simpo_loss``: ``simpo``), else its objective class name lowercased."""
    choices = _read_yaml(run_dir / ".hydra" / "hydra.yaml").get("hydra", {}).get("runtime", {})
    choice = (choices.get("choices") or {}).get("algo")
    if choice:
        return str(choice)
    config = config if config is not None else _read_yaml(run_dir / "config.yaml")
    return objective_from_algo(config.get("algo") or {})


def objective_from_algo(algo: Mapping[str, Any]) -> str | None:
    """An objective's name from its ``algo`` config alone (no Hydra choice recorded)."""
    loss = algo.get("loss")
    if isinstance(loss, str):
        return loss.rsplit(".", 1)[-1].removesuffix("_loss")
    target = algo.get("_target_")
    return str(target).rsplit(".", 1)[-1].lower() if target else None


def _final_metrics(run_dir: Path) -> tuple[dict[str, float], bool]:
    """summary.json's metrics, or (an unfinished run) the last logged value of each metric."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()), True
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return {}, False
    frame = pd.read_csv(metrics)
    last = {
        column: float(frame[column].dropna().iloc[-1])
        for column in frame.columns
        if column not in ("epoch", "step") and frame[column].notna().any()
    }
    return last, False


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """One row per run: ``run_dir``, ``objective``, ``finished``, flattened config, final metrics.

    Args:
        *paths: Run directories, or directories holding runs (a multirun, a leaderboard, ``outputs/``).

    Returns:
        Config columns as flattened keys of the run's resolved ``config.yaml`` (``algo.beta``, ``seed``),
        metric columns named as logged (``val/rewards/accuracies``) from ``summary.json``; ``finished`` is
        False for a run without ``summary.json`` (its metrics are then the last logged values).
    """
    rows = []
    for run_dir in find_run_dirs(*paths):
        config = _read_yaml(run_dir / "config.yaml")
        metrics, finished = _final_metrics(run_dir)
        row: dict[str, Any] = {
            "run_dir": str(run_dir),
            "objective": objective_name(run_dir, config),
            "finished": finished,
        }
        row.update(flatten(config))
        row.update(metrics)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_dir", "objective", "finished"])


def load_history(*paths: str | Path) -> pd.DataFrame:
    """Every logged value of every run, long format: ``run_dir, objective, epoch, step, metric, value``.

    ``metric`` keeps its split prefix (``train/loss``, ``val/loss``); a missing value (a metric not
    logged at that step) has no row.
    """
    frames = []
    for run_dir in find_run_dirs(*paths):
        metrics = run_dir / "metrics.csv"
        if not metrics.is_file() or metrics.stat().st_size == 0:
            continue
        wide = pd.read_csv(metrics)
        ids = [column for column in ("epoch", "step") if column in wide.columns]
        long = wide.melt(id_vars=ids, var_name="metric", value_name="value").dropna(subset=["value"])
        long.insert(0, "objective", objective_name(run_dir))
        long.insert(0, "run_dir", str(run_dir))
        frames.append(long)
    columns = ["run_dir", "objective", "epoch", "step", "metric", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    history = pd.concat(frames, ignore_index=True)
    return history.reindex(columns=columns).sort_values(["run_dir", "metric", "step"], ignore_index=True)


def load_leaderboard(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A leaderboard directory's table (one row per task and objective) and runs (one row per run).

    Raises:
        FileNotFoundError: ``path`` holds no ``leaderboard.csv`` (it is not a leaderboard's run directory).
    """
    path = Path(path)
    if not (path / "leaderboard.csv").is_file():
        raise FileNotFoundError(
            f"{path / 'leaderboard.csv'} not found: path must be a leaderboard's run directory"
        )
    board = pd.read_csv(path / "leaderboard.csv", keep_default_na=False, na_values=["", "nan", "NaN"])
    runs_file = path / "runs.csv"
    if not runs_file.is_file():
        return board, pd.DataFrame()
    return board, pd.read_csv(runs_file, keep_default_na=False, na_values=["", "nan", "NaN"])
