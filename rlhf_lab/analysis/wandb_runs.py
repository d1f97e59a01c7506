"""W&B runs in the columns of `rlhf_lab.analysis.runs` (`load_runs`, `load_history`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from rlhf_lab.analysis.runs import flatten, objective_from_algo


def _unwrap_wandb_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # The raw API shape is {"key": {"value": ..., "desc": ...}}; the client usually unwraps it already.
    out = {}
    for key, value in config.items():
        if str(key).startswith("_"):
            continue  # W&B's own bookkeeping (_wandb)
        if isinstance(value, Mapping) and "value" in value and set(value) <= {"value", "desc"}:
            value = value["value"]
        out[key] = value
    return out


def _wandb_summary(run: Any) -> dict[str, Any]:
    summary = getattr(run.summary, "_json_dict", None)
    if summary is None:
        summary = dict(run.summary)
    return {
        key: value
        for key, value in summary.items()
        if not str(key).startswith("_") and isinstance(value, (int, float, bool, str))
    }


def load_wandb_runs(
    entity: str,
    project: str,
    filters: Mapping[str, Any] | None = None,
    history: bool = False,
    api: Any = None,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Runs of a W&B project, in `load_runs`' columns (history in `load_history`'s with ``history=True``).

    Args:
        entity: W&B entity (user or team).
        project: W&B project.
        filters: MongoDB-style run filters, passed to ``wandb.Api().runs``
            (e.g. ``{"state": "finished"}``).
        history: Also fetch every run's logged history.
        api: A ``wandb.Api`` (default: a new one, authenticated as the user's login).

    Returns:
        The runs (``run_dir`` is ``wandb:<entity>/<project>/<run id>``, plus ``run_id`` and ``run_name``),
        or ``(runs, history)`` when ``history`` is true.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    rows, frames = [], []
    for run in api.runs(f"{entity}/{project}", filters=dict(filters or {})):
        run_dir = f"wandb:{entity}/{project}/{run.id}"
        config = flatten(_unwrap_wandb_config(run.config or {}))
        algo = {key.removeprefix("algo."): value for key, value in config.items() if key.startswith("algo.")}
        objective = config.get("objective") or objective_from_algo(algo)
        row = {"run_dir": run_dir, "objective": objective, "run_id": run.id, "run_name": run.name}
        row.update(config)
        row.update(_wandb_summary(run))
        rows.append(row)
        if history:
            frame = run.history(pandas=True)
            if frame is None or len(frame) == 0:
                continue
            # Lightning logs its own step as a metric; W&B's _step counts log calls.
            step = "trainer/global_step" if "trainer/global_step" in frame.columns else "_step"
            metrics = [c for c in frame.columns if not str(c).startswith("_") and c != "trainer/global_step"]
            long = frame.rename(columns={step: "step"}).melt(
                id_vars=["step"], value_vars=metrics, var_name="metric", value_name="value"
            )
            long = long.dropna(subset=["value"])
            long.insert(0, "objective", objective)
            long.insert(0, "run_dir", run_dir)
            frames.append(long)
    runs = pd.DataFrame(rows, columns=None if rows else ["run_dir", "objective", "run_id", "run_name"])
    if not history:
        return runs
    columns = ["run_dir", "objective", "step", "metric", "value"]
    long_history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return runs, long_history.reindex(columns=columns)
