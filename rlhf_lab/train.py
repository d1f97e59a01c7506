"""Compose -> instantiate -> fit -> validate -> export: one run, as a flat list of steps."""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from rlhf_lab.callbacks import (
    FiniteModelCheckpoint,
    LastCheckpoint,
    RunProgress,
    StartValidation,
    held_out_lines,
)
from rlhf_lab.checkpoints import (
    AtomicCheckpointIO,
    newest_readable,
    read_checkpoint_state,
    remove_partial_files,
)
from rlhf_lab.checks import MonitorCheck, check_run_config
from rlhf_lab.data.formats import DataError
from rlhf_lab.diagnostics import diagnostics_for, learned, not_learned_message
from rlhf_lab.errors import ConfigError, RunStopped
from rlhf_lab.export import export_run, non_finite, push_target, push_to_hub, write_summary
from rlhf_lab.header import RunHeader
from rlhf_lab.loggers import archive_metrics, truncate_metrics
from rlhf_lab.objectives.base import AlignmentObjective, RuntimeConfig
from rlhf_lab.quant import check_compatible
from rlhf_lab.strategies import fsdp_options
from rlhf_lab.strategies import resolve as resolve_strategy

log = logging.getLogger(__name__)

#: ``summary.json``'s last key, set when everything the run writes is written (the leaderboard, stages and
#: sweeps count a child run as finished only then: `rlhf_lab.leaderboard.resumable`).
COMPLETE_KEY = "run/complete"
#: Names the process that started this run as a child (`rlhf_lab.leaderboard.resumable.child_env`).
PARENT_PID_ENV = "RLHF_LAB_PARENT_PID"


class NotLearned(RunStopped):
    """The run did not learn (`rlhf_lab.diagnostics.learned`) and ``export.require_learning`` is true."""


def die_with_parent() -> None:
    """A child run of a leaderboard, stage chain or sweep dies with its parent
    (`rlhf_lab.leaderboard.resumable.die_with_parent`); nothing to do for any other run."""
    if os.environ.get(PARENT_PID_ENV):
        from rlhf_lab.leaderboard.resumable import die_with_parent as die

        die()


def resolve_monitor(cfg: DictConfig, objective: AlignmentObjective) -> tuple[str | None, str]:
    """``checkpoint.monitor`` and ``checkpoint.mode``, with ``auto`` taken from the objective (``val/loss``
    min for offline objectives, ``val/reward`` max for online RL)."""
    monitor, mode = cfg.checkpoint.monitor, cfg.checkpoint.mode
    if monitor == "auto":
        monitor = objective.monitor[0]
    if mode == "auto":
        mode = objective.monitor[1] if monitor == objective.monitor[0] else "min"
    return monitor, mode


def build_callbacks(cfg: DictConfig, run_dir: Path, objective: AlignmentObjective | None = None) -> list[Any]:
    """RunProgress first (its batch-end hook must run before a checkpoint is saved), then the objective's
    ``trainer.nan_policy`` (`rlhf_lab.nan_policy.NanPolicy`: checks the gradient before every optimiser step),
    then ``last.ckpt`` on its own schedule, the monitor's check, the validation at step 0 (after that check:
    a typo fails first), the warnings that explain (`rlhf_lab.diagnostics`), then the best-k by the monitored
    metric."""
    checkpoints = run_dir / "checkpoints"
    ckpt = cfg.checkpoint
    monitor, mode = resolve_monitor(cfg, objective) if objective is not None else (ckpt.monitor, ckpt.mode)
    callbacks: list[Any] = [RunProgress(), RunHeader(cfg)]
    if objective is not None:
        callbacks.append(objective.nan_policy)
    if ckpt.save_last:
        callbacks.append(
            LastCheckpoint(
                checkpoints,
                every_n_train_steps=ckpt.every_n_train_steps,
                every_n_minutes=ckpt.get("every_n_minutes"),
            )
        )
    if monitor is not None:
        callbacks.append(MonitorCheck(monitor))
    callbacks.append(StartValidation(enabled=bool(cfg.trainer.get("val_on_start", True))))
    callbacks.append(diagnostics_for(cfg, objective))
    if ckpt.save_top_k:
        callbacks.append(
            FiniteModelCheckpoint(
                dirpath=checkpoints,
                filename="step{step:06d}",
                auto_insert_metric_name=False,
                monitor=monitor,
                mode=mode,
                save_top_k=ckpt.save_top_k,
                save_last=False,
            )
        )
    if cfg.trainer.get("enable_progress_bar", True):
        from rlhf_lab.progress import StepProgressBar

        callbacks.append(StepProgressBar())  # counts optimiser steps: a total and ETA that mean the run's end
    return callbacks


def resolve_checkpoint(cfg: DictConfig, run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint to resume from and its contents: ``ckpt_path`` (read safely: never runs code), or with
    ``resume=true`` the newest readable checkpoint of the run directory (unreadable ones are skipped and named).
    """
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
        return str(path), read_checkpoint_state(path)  # a file, or a sharded strategy's directory
    if cfg.resume:
        found = newest_readable(run_dir)
        if found is not None:
            log.info("resuming from %s (step %d)", found[0], found[1]["global_step"])
            return str(found[0]), found[1]
        log.warning(
            "resume=true but %s holds no readable checkpoint: starting from scratch", run_dir / "checkpoints"
        )
    return None


def metric_values(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The ``prefix*`` metrics as floats, non-finite ones (a diverged run's NaN loss) included."""
    return {
        key: float(value.item() if isinstance(value, torch.Tensor) else value)
        for key, value in metrics.items()
        if key.startswith(prefix)
    }


#: ``trainer.*`` keys rlhf_lab reads itself; the rest are ``lightning.Trainer`` arguments.
OWN_TRAINER_KEYS = ("nan_policy", "max_nan_skips", "val_on_start")
#: ``trainer.*`` keys an objective that optimises manually (online RL) applies itself.
MANUAL_OPTIMISATION_KEYS = ("accumulate_grad_batches", "gradient_clip_val")


def lightning_trainer_config(trainer_cfg: DictConfig, manual_optimisation: bool = False) -> DictConfig:
    """``cfg.trainer`` without rlhf_lab's own keys (`OWN_TRAINER_KEYS`, and under manual optimisation the
    keys the objective applies itself), ready for ``instantiate``."""
    values = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(values, dict)
    own = OWN_TRAINER_KEYS + (MANUAL_OPTIMISATION_KEYS if manual_optimisation else ())
    return OmegaConf.create({k: v for k, v in values.items() if k not in own})


def _instantiate(node: DictConfig) -> Any:
    """`instantiate`, re-raising our own config errors unwrapped (Hydra wraps them in its own exception)."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ConfigError, DataError)):
            raise cause from None
        raise


def build_teacher(node: DictConfig | None) -> Any:
    """``cfg.teacher``: None (``teacher=none``), ``"adapter_off"`` (self-distillation) or a model spec."""
    if node is None or not node:
        return None
    if node.get("adapter_off"):
        return "adapter_off"
    return _instantiate(node)


def objective_class(target: str) -> type[AlignmentObjective]:
    """The objective class ``algo._target_`` builds (a factory function, such as a legacy ``GRPO``, names it as
    its return type), read before anything is built: the data needs its batch kind."""
    built = get_object(target)
    if isinstance(built, type):
        return built
    returned = typing.get_type_hints(built).get("return")
    if not (isinstance(returned, type) and issubclass(returned, AlignmentObjective)):
        raise ConfigError(
            f"algo._target_={target} is neither an objective class nor a function returning one"
        )
    return returned


def build_data(
    cfg: DictConfig, kind: type[AlignmentObjective], model_spec: Any, corpus: Any = None
) -> tuple[Any, Any]:
    """The DataModule for objectives of class ``kind``, tokenised, and the policy's tokenizer. A tiny policy
    trains its tokenizer and builds its weights from the training texts first (``corpus``'s, a DataModule
    of other data, if given)."""
    datamodule = _instantiate(cfg.data)
    for data in {id(datamodule): datamodule, id(corpus): corpus}.values():
        if data is not None:
            data.batch_kind = kind.batch_kind
            data.completes_prompts = kind.completes_prompts
    model_spec.prepare((corpus or datamodule).corpus)
    tokenizer = model_spec.load_tokenizer()
    processor = model_spec.load_processor()  # None for a text model
    if processor is not None:
        processor.tokenizer = tokenizer  # one tokenizer (pad token, chat template) for data and export
    datamodule.set_tokenizer(tokenizer, processor)
    datamodule.setup("fit")
    return datamodule, tokenizer


def build(cfg: DictConfig, corpus_data: DictConfig | None = None) -> tuple[AlignmentObjective, Any, Any]:
    """Instantiate the DataModule (tokenised) and then the objective, which receives it, from a composed config.

    In one direction: the objective's class says what batches hold; the data is read (a bad file fails before
    any model loads), a tiny policy's tokenizer trains on it, the data is tokenised; the objective is built
    with the data and checks it; then the models it will build beside the policy are prepared (tiny ones
    from the same texts). The models themselves are built later, in the objective's `configure_model`.

    Args:
        cfg: The composed config.
        corpus_data: A ``data`` config whose training texts build the tiny models' tokenizer and weights
            instead of ``cfg.data``'s (evaluating a tiny-model run on other data: its tokenizer and initial
            weights came from its own training data).
    """
    kind = objective_class(cfg.algo._target_)
    adapter, quant = _instantiate(cfg.adapter), _instantiate(cfg.quant)
    check_compatible(quant, adapter, _instantiate(cfg.strategy))
    teacher = build_teacher(cfg.get("teacher"))
    if teacher is not None and "teacher" not in kind.RUNTIME_ARGS:
        raise ConfigError(
            "a teacher is set (teacher=...) but this objective does not distil; use algo=kd, seqkd or gkd, "
            "or teacher=none"
        )
    model_spec = _instantiate(cfg.model)
    corpus = None if corpus_data is None else _instantiate(corpus_data)
    datamodule, tokenizer = build_data(cfg, kind, model_spec, corpus)
    # Built objects go in after instantiation: Hydra would merge them into the config otherwise.
    make_objective = instantiate(cfg.algo, _partial_=True, _convert_="all")
    built = {"model": model_spec, "adapter": adapter, "optim": _instantiate(cfg.optim), "quant": quant}
    try:
        objective: AlignmentObjective = make_objective(
            **built, runtime=runtime_config(cfg), data=datamodule, **({"teacher": teacher} if teacher else {})
        )
    except TypeError as error:
        raise ConfigError(f"algo: {error}") from error
    # The companions' specs (a tiny teacher builds from the same texts; the copy reference is the policy's).
    for spec in {id(spec): spec for spec in objective.model_specs() if spec is not model_spec}.values():
        spec.prepare((corpus or datamodule).corpus)
    return objective, datamodule, tokenizer


def runtime_config(cfg: DictConfig) -> RuntimeConfig:
    """The run-level settings objectives read (`RuntimeConfig`), from ``cfg``'s paths and trainer."""
    return RuntimeConfig(
        cache_dir=cfg.paths.cache_dir,
        logps_chunk_size=cfg.logps_chunk_size,
        logps_recompute=cfg.get("logps_recompute", "auto"),
        nan_policy=cfg.trainer.get("nan_policy", "stop"),
        max_nan_skips=cfg.trainer.get("max_nan_skips", 10),
        seed=int(cfg.seed),
        run_dir=str(cfg.paths.run_dir),
        accumulate_grad_batches=int(cfg.trainer.get("accumulate_grad_batches", 1) or 1),
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
    )


@dataclass
class Run:
    """What a finished run leaves in memory (tests and notebooks inspect it)."""

    summary: dict[str, float]
    objective: AlignmentObjective
    datamodule: Any
    tokenizer: Any
    trainer: L.Trainer
    run_dir: Path


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one experiment; returns the summary metrics (also written to ``<run dir>/summary.json``)."""
    return run(cfg).summary


def run(cfg: DictConfig) -> Run:
    """Compose-time config -> trained, validated, exported run."""
    from rlhf_lab.preflight import preflight

    die_with_parent()
    preflight(cfg)  # every model available and memory enough, before any download or model load
    require_learning = cfg.export.get("require_learning", False)
    if not isinstance(require_learning, bool):  # the export node has no schema to type it
        raise ConfigError(
            f"export.require_learning={require_learning!r} is not supported; choose true or false"
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    objective, datamodule, tokenizer = build(cfg)
    check_run_config(cfg, datamodule)  # training settings against each other and the data, before any model

    ckpt_path = prepare_resume(cfg, run_dir)
    loggers = [instantiate(logger_cfg) for logger_cfg in cfg.logger.values()] if cfg.logger else []
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(hparams)
    strategy = resolve_strategy(_instantiate(cfg.strategy), cfg.trainer, cfg.data.batch_size)
    callbacks = build_callbacks(cfg, run_dir, objective)
    trainer: L.Trainer = instantiate(
        lightning_trainer_config(cfg.trainer, manual_optimisation=not objective.automatic_optimization),
        strategy=strategy,
        logger=loggers or False,
        callbacks=callbacks,
        # Atomic writes and safe reads of single-file checkpoints (sharded strategies write their own).
        plugins=[AtomicCheckpointIO()] if single_file_checkpoints(strategy) else None,
    )
    trainer.fit(objective, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    summary = final_summary(cfg, trainer, objective, datamodule, callbacks)

    # Sharded weights are gathered collectively: every rank takes part, rank zero writes.
    state_dict = gathered_state_dict(objective.policy.model, trainer.strategy) if cfg.export.enabled else None
    if trainer.is_global_zero:
        write_summary(run_dir / "summary.json", summary)
        refused = summary.get("run/learned") is False and require_learning
        exported = (
            cfg.export.enabled
            and not refused
            and export_run(cfg, run_dir, objective, datamodule, tokenizer, state_dict, summary)
        )
        write_curves(run_dir)
        summary[COMPLETE_KEY] = True  # last: everything the run writes is written
        write_summary(run_dir / "summary.json", summary)
        report(run_dir, summary, objective.monitor[0])
        if refused:
            raise NotLearned(
                f"{not_learned_message(summary, objective.monitor[0])}; not exported (export.require_learning=true)"
            )
        repo_id = push_target(cfg)
        if exported and repo_id:
            # Last: an upload that fails (offline, no token) has the run's files and report behind it.
            push_to_hub(run_dir / "export", repo_id, private=bool(cfg.export.get("private", False)))
    return Run(summary, objective, datamodule, tokenizer, trainer, run_dir)


def prepare_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from (None: start over), with ``metrics.csv`` made to match it: as the
    checkpoint saw it when resuming (what follows is trained and logged again), moved aside otherwise. A
    ``summary.json`` there goes: it describes a run that is training again, and a parent (leaderboard,
    stages, sweep) killed now must not count this run as finished."""
    remove_partial_files(run_dir / "checkpoints")
    resumed = resolve_checkpoint(cfg, run_dir)
    (run_dir / "summary.json").unlink(missing_ok=True)
    if resumed is None:
        # Starting over: another run's rows move aside instead of being appended to.
        archive_metrics(run_dir / "metrics.csv")
        return None
    progress = (resumed[1].get("callbacks") or {}).get(RunProgress.__qualname__) or {}
    if progress.get("csv_rows") is not None:
        truncate_metrics(run_dir / "metrics.csv", progress["csv_rows"], progress.get("pending_row"))
    return resumed[0]


def final_summary(
    cfg: DictConfig, trainer: L.Trainer, objective: AlignmentObjective, datamodule: Any, callbacks: list[Any]
) -> dict[str, Any]:
    """``summary.json``'s values: the last training metrics, a final validation, the step, whether the run
    diverged, the validation at step 0 (``val_start/...``), the data's statistics and what the data layer read."""
    # The last training metrics: this process's, or (resumed after training had finished) the checkpoint's.
    progress_callback = next(callback for callback in callbacks if isinstance(callback, RunProgress))
    summary = {**progress_callback.train_metrics, **metric_values(trainer.callback_metrics, "train/")}
    if cfg.trainer.get("fast_dev_run"):
        summary.update(metric_values(trainer.callback_metrics, "val/"))  # its single validation batch
    else:
        results = trainer.validate(objective, datamodule=datamodule, verbose=False)
        summary.update(metric_values(results[0] if results else {}, "val/"))
    summary["trainer/global_step"] = float(trainer.global_step)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        summary["gpu/max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    # A metric that went NaN/inf is kept (null in summary.json), and the run says it diverged.
    summary["run/diverged"] = 1.0 if non_finite(summary) else 0.0
    start = next(callback for callback in callbacks if isinstance(callback, StartValidation))
    summary.update(start.summary_values())  # after the divergence check: only the run's own end counts
    judged = learned(summary, *objective.monitor)
    if judged is not None:
        summary["run/learned"] = judged
    summary.update(
        {f"data/{split}/{k}": float(v) for split, stats in datamodule.stats.items() for k, v in stats.items()}
    )
    summary.update(datamodule.data_report())  # the layout read and the columns it did not read
    return summary


def single_file_checkpoints(strategy: Any) -> bool:
    """Whether the strategy saves one checkpoint file (DeepSpeed and FSDP2 write directories of their own)."""
    return fsdp_options(strategy) is None and not type(strategy).__name__.endswith("DeepSpeedStrategy")


def write_curves(run_dir: Path) -> None:
    """``<run dir>/curves.png`` from metrics.csv; a plotting problem only warns, the run has finished."""
    try:
        from rlhf_lab.analysis import plot_run_curves

        plot_run_curves(run_dir)
    except Exception as error:
        log.warning("could not write %s: %s", run_dir / "curves.png", error)


def gathered_state_dict(model: torch.nn.Module, strategy: Any) -> dict[str, Any] | None:
    """The full state dict of a sharded model (FSDP2, ZeRO-3), or None when every rank holds full weights.

    Collective: every rank must call it; the result is meaningful on rank zero.
    """
    if fsdp_options(strategy) is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if getattr(strategy, "zero_stage_3", False):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    return None


def report(run_dir: Path, summary: dict[str, Any], objective_metric: str | None = None) -> None:
    """The run's last console lines: its directory, every held-out metric (``start -> end`` when the run
    validated at step 0), whether it diverged, and (a warning) whether it did not learn (``run/learned``)."""
    lines = [f"run directory: {run_dir.resolve()}", *held_out_lines(summary)]
    diverged = non_finite(summary)
    if diverged:
        lines.append(f"the run diverged: non-finite {', '.join(diverged)} (null in summary.json)")
    print("\n".join(lines), flush=True)
    if summary.get("run/learned") is False and objective_metric is not None:
        log.warning(not_learned_message(summary, objective_metric))
