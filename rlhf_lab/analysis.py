"""Load finished runs into DataFrames and plot them: training curves, sweeps, objectives side by side.

    from rlhf_lab import analysis
    runs = analysis.load_runs("multirun/2026-11-22/10-00-00")      # one row per run
    history = analysis.load_history("multirun/2026-11-22/10-00-00")  # one row per (run, step, metric)
    analysis.plot_parameter(runs, "algo.beta", "val/rewards/accuracies", out="beta.png")

Runs are found by their ``summary.json`` or ``metrics.csv``, so a path may be one run directory, a Hydra
multirun directory, a leaderboard directory or any folder holding run directories. Column names follow
the run: config keys flattened with dots (``algo.beta``), metrics named as logged (``val/loss``).
Figures are built on `matplotlib.figure.Figure` (no pyplot state), so plotting works in a training
process, a notebook or a headless test alike.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

log = logging.getLogger(__name__)

RUN_MARKERS = ("summary.json", "metrics.csv")
#: `plot_run_curves` panels: title and the metrics (without ``train/``/``val/``) drawn in it.
RUN_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("rewards/accuracies", ("rewards/accuracies",)),
    ("rewards/margins", ("rewards/margins",)),
    ("log-probs: chosen vs rejected", ("logps/chosen", "logps/rejected")),
    # Online RL.
    ("reward", ("reward",)),
    ("completion length", ("completions/mean_length",)),
    ("KL to the reference", ("kl",)),
)


# ------------------------------------------------------------------------------------------------ loading
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


# ------------------------------------------------------------------------------------------- statistics
def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided confidence interval of the mean: ``(mean, low, high)``.

    Student's t with ``n - 1`` degrees of freedom (scipy), or the normal quantile (1.96 at 95%) when scipy
    is missing. NaNs are ignored; one value has no interval (``low`` and ``high`` are NaN).
    """
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return mean, math.nan, math.nan
    half = _critical_value(confidence, len(clean) - 1) * statistics.stdev(clean) / math.sqrt(len(clean))
    return mean, mean - half, mean + half


def ci_method() -> str:
    """How `mean_ci` computes its interval here: ``Student's t`` (scipy installed) or ``normal``."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return "normal"
    return "Student's t"


def _critical_value(confidence: float, dof: int) -> float:
    quantile = 0.5 + confidence / 2
    try:
        from scipy import stats
    except ImportError:
        return statistics.NormalDist().inv_cdf(quantile)
    return float(stats.t.ppf(quantile, dof))


def summarize(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    by: str | Sequence[str] = "objective",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean and CI of each metric per group: columns ``<by>, n, <metric>/mean, <metric>/low, <metric>/high``.

    Metrics missing from ``runs`` give NaN columns (a reward model has no generations, say).
    """
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for group, frame in runs.groupby(keys, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        row["n"] = len(frame)
        for metric in metrics:
            values = frame[metric] if metric in frame.columns else []
            row[f"{metric}/mean"], row[f"{metric}/low"], row[f"{metric}/high"] = mean_ci(values, confidence)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- plotting
def _figure(panels: int, width: float = 4.5, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure

    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _save(figure: Any, out: str | Path | None) -> None:
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)


def _run_label(run_dir: str, run_dirs: Sequence[str]) -> str:
    """The shortest tail of the path that tells the runs apart (``0``, ``dpo_s1``...)."""
    parts = Path(run_dir).parts
    for depth in range(1, len(parts) + 1):
        tails = {Path(*Path(other).parts[-depth:]) for other in run_dirs}
        if len(tails) == len(set(run_dirs)):
            return str(Path(*parts[-depth:]))
    return run_dir


def plot_curves(
    history: pd.DataFrame,
    metrics: Sequence[str] = ("train/loss", "val/loss"),
    out: str | Path | None = None,
    label: str | None = None,
) -> Any:
    """One panel per metric, a line per run (metric against step).

    Args:
        history: `load_history` output.
        metrics: Metric names as logged.
        out: Also save the figure here (PNG by the suffix).
        label: Column naming each line (default: the shortest distinguishing tail of ``run_dir``), e.g.
            ``objective`` or a config column merged in from `load_runs`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    figure, axes = _figure(len(metrics))
    run_dirs = list(dict.fromkeys(history["run_dir"]))
    for axis, metric in zip(axes, metrics, strict=True):
        rows = history[history["metric"] == metric]
        for run_dir, frame in rows.groupby("run_dir", sort=False):
            name = str(frame[label].iloc[0]) if label else _run_label(str(run_dir), run_dirs)
            axis.plot(frame["step"], frame["value"], marker="o" if len(frame) < 20 else None, label=name)
        axis.set_title(metric)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    _save(figure, out)
    return figure


def plot_parameter(
    runs: pd.DataFrame,
    parameter: str = "algo.beta",
    metric: str = "val/rewards/accuracies",
    out: str | Path | None = None,
    hue: str | None = "objective",
    confidence: float = 0.95,
) -> Any:
    """A sweep's parameter against a held-out metric: every run as a dot, the mean and CI over seeds as a line.

    The x axis is logarithmic when every value is positive and they span more than 10x (beta, lr).
    """
    figure, (axis,) = _figure(1, width=5.5, height=4)
    frame = runs.dropna(subset=[parameter, metric])
    groups = frame.groupby(hue, sort=True) if hue and hue in frame.columns else [(None, frame)]
    for name, group in groups:
        summary = summarize(group, [metric], by=parameter, confidence=confidence).sort_values(parameter)
        x = summary[parameter].astype(float)
        mean = summary[f"{metric}/mean"]
        line = axis.plot(x, mean, marker="o", label=str(name) if name is not None else metric)[0]
        axis.fill_between(
            x, summary[f"{metric}/low"], summary[f"{metric}/high"], alpha=0.2, color=line.get_color()
        )
        axis.scatter(group[parameter].astype(float), group[metric], s=12, alpha=0.6, color=line.get_color())
    values = frame[parameter].astype(float)
    if len(values) and (values > 0).all() and values.max() > 10 * values.min():
        axis.set_xscale("log")
    axis.set_xlabel(parameter)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} vs {parameter} (mean, {confidence:.0%} CI)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    _save(figure, out)
    return figure


def plot_objectives(
    runs: pd.DataFrame,
    metric: str = "val/rewards/accuracies",
    out: str | Path | None = None,
    confidence: float = 0.95,
) -> Any:
    """Objectives side by side: a bar per objective (mean over seeds), its CI, and each run as a dot."""
    summary = summarize(runs.dropna(subset=[metric]), [metric], confidence=confidence)
    figure, (axis,) = _figure(1, width=max(4.5, 0.9 * len(summary) + 2), height=4)
    positions = list(range(len(summary)))
    mean = summary[f"{metric}/mean"]
    # A single seed has no interval: draw no error bar rather than a NaN one.
    low = (mean - summary[f"{metric}/low"]).fillna(0)
    high = (summary[f"{metric}/high"] - mean).fillna(0)
    axis.bar(positions, mean, yerr=[low, high], capsize=4, alpha=0.7)
    for position, objective in zip(positions, summary["objective"], strict=True):
        values = runs.loc[runs["objective"] == objective, metric].dropna()
        axis.scatter([position] * len(values), values, color="black", s=12, zorder=3)
    axis.set_xticks(positions, [str(name) for name in summary["objective"]], rotation=30, ha="right")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} by objective (mean, {confidence:.0%} CI)")
    axis.grid(axis="y", alpha=0.3)
    _save(figure, out)
    return figure


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


def plot_leaderboard(board: pd.DataFrame, out: str | Path | None = None, split: str | None = None) -> Any:
    """Objective x task heatmap of mean accuracy (a leaderboard's table), each cell annotated with the mean,
    the confidence interval's half-width and the rank within its task."""
    tasks = [str(task) or "data" for task in dict.fromkeys(board["task"])]
    objectives = list(dict.fromkeys(board["objective"]))
    grid = [[math.nan] * len(tasks) for _ in objectives]
    labels = [[""] * len(tasks) for _ in objectives]
    for _, row in board.iterrows():
        i, j = objectives.index(row["objective"]), tasks.index(str(row["task"]) or "data")
        mean, low = float(row["accuracy_mean"]), float(row["accuracy_low"])
        grid[i][j] = mean
        if not math.isnan(mean):
            half = "" if math.isnan(low) else f"\n± {mean - low:.2f}"
            labels[i][j] = f"{mean:.2f}{half}\n#{int(row['rank'])}"
    figure, (axis,) = _figure(
        1, width=max(4.5, 1.3 * len(tasks) + 2.5), height=max(3.0, 0.55 * len(objectives) + 1.5)
    )
    image = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, j in itertools.product(range(len(objectives)), range(len(tasks))):
        value = grid[i][j]
        if not math.isnan(value):
            colour = "black" if value > 0.6 else "white"
            axis.text(j, i, labels[i][j], ha="center", va="center", fontsize=7, color=colour)
    axis.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    axis.set_yticks(range(len(objectives)), objectives)
    axis.set_title(f"{split + ' ' if split else ''}accuracy by objective and task (mean, CI, rank)")
    figure.colorbar(image, ax=axis, shrink=0.8)
    _save(figure, out)
    return figure


def plot_run_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """One run's curves (loss, accuracies, margins, chosen vs rejected log-probs; for online RL reward,
    completion length and KL; train and val) as a PNG.

    Panels whose metrics the objective does not log (SFT has no rewards) are left out.

    Args:
        run_dir: The run directory (reads its ``metrics.csv``).
        out: Where to write (default ``<run_dir>/curves.png``).

    Returns:
        The written file, or None when the run logged none of the metrics.
    """
    run_dir = Path(run_dir)
    history = load_history(run_dir)
    logged = set(history["metric"])
    panels = [
        (
            title,
            [
                f"{split}/{name}"
                for name in names
                for split in ("train", "val")
                if f"{split}/{name}" in logged
            ],
        )
        for title, names in RUN_PANELS
    ]
    panels = [(title, metrics) for title, metrics in panels if metrics]
    if not panels:
        return None
    figure, axes = _figure(len(panels))
    for axis, (title, metrics) in zip(axes, panels, strict=True):
        for metric in metrics:
            rows = history[history["metric"] == metric]
            style = "-" if metric.startswith("train/") else "--"
            axis.plot(
                rows["step"], rows["value"], style, marker="o" if len(rows) < 20 else None, label=metric
            )
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(f"{objective_name(run_dir) or 'run'}: {run_dir.name}")
    out = Path(out) if out is not None else run_dir / "curves.png"
    _save(figure, out)
    return out
