"""Held-out metrics and greedy samples for a finished run.

    python -m rlhf_lab.evaluate run_dir=outputs/2026-11-22/10-00-00 [samples=4] [max_new_tokens=48]
        [weights=auto|export|checkpoint|<file.ckpt>|<export dir>] [validate=true] [out_dir=...]
        [split=val|test] [data=jsonl data.source.eval_path=held_out.jsonl] [any.other=override]

A Hydra app: the options above take training's override syntax (``run_dir=???`` is required); ``--help``
lists them, ``--cfg job`` prints them. It writes nothing but its results (no ``outputs/``, no ``.hydra/``).

The objective is rebuilt from the run's resolved ``config.yaml`` (the same model spec, so the same
reference: the base model the run started from), the trained weights are loaded, and Lightning validates
on the held-out split: policies report their implicit-reward accuracy and margins, reward models their
pairwise accuracy, all named as in training (``val/rewards/accuracies``). Greedy generations for the
first ``samples`` held-out prompts are printed (reward models: the chosen and rejected scores instead). On a
suite task (``data=suite``: verifiable answers) the completions are checked too: ``<split>/generation_accuracy``
is the share giving the right answer (``length_bias``: also ``<split>/answer_length``; `answer_metrics`).
Writes ``<run_dir>/eval/metrics.json`` and ``<run_dir>/eval/samples.jsonl``.

Other ``key=value`` arguments override the run's config: ``group=option`` swaps a whole config group
(``data=jsonl``), dotted keys set values (``algo.reference=copy``); a key the run's config does not have
fails (``+key=value`` adds one). ``split=test`` (or ``data.eval_split=test``) evaluates on the data's test
split (``data=suite``); its metrics are then named ``test/...``. With ``model=tiny`` the tokenizer and
initial weights derive from the run's training data, so they are rebuilt from it whatever the evaluation
data. The reference is always the initial policy: a ``precomputed`` reference on new data is computed from a
freshly loaded base model (LoRA/DoRA: the base with adapters off), never from the trained weights.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from rlhf_lab.config import CONF_DIR, compose_package_config
from rlhf_lab.errors import ConfigError
from rlhf_lab.launch import compose_app, register_app, require, run_app, split_app_arguments

log = logging.getLogger(__name__)

APP = "evaluate"
WEIGHT_SOURCES = ("auto", "export", "checkpoint")


@dataclass
class EvalOptions:
    """What `evaluate` does besides the config overrides.

    Attributes:
        run_dir: The run directory (holds ``config.yaml`` and ``export/`` or ``checkpoints/last.ckpt``).
        weights: ``auto`` (the export for full fine-tuning, else ``checkpoints/last.ckpt``), ``export``,
            ``checkpoint``, or a path to a ``.ckpt`` file or an exported model directory.
        samples: Held-out prompts to generate for (reward models: pairs to score).
        max_new_tokens: Longest greedy generation.
        validate: Run the held-out validation (off: samples only).
        out_dir: Where metrics.json and samples.jsonl go (default ``<run_dir>/eval``).
        overrides: Config overrides (``group=option`` or ``dotted.key=value``).
        split: The data split to evaluate on (``data.eval_split``; None: the run's, ``val``).
        print_report: Print the metrics and samples (off: only the files; a leaderboard prints a line per run).
    """

    run_dir: Path
    weights: str = "auto"
    samples: int = 4
    max_new_tokens: int = 48
    validate: bool = True
    out_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    split: str | None = None
    print_report: bool = True

    @property
    def config_overrides(self) -> list[str]:
        """``overrides``, after ``data.eval_split=<split>`` when a split is given."""
        return [*([f"data.eval_split={self.split}"] if self.split else []), *self.overrides]


@dataclass
class EvaluateOptions:
    """``python -m rlhf_lab.evaluate``'s options, as Hydra composes them (``???``: required). Arguments that
    are not these options are overrides of the run's config (`EvalOptions.overrides`)."""

    run_dir: str = MISSING
    weights: str = "auto"
    samples: int = 4
    max_new_tokens: int = 48
    validate: bool = True
    out_dir: Optional[str] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    split: Optional[str] = None  # noqa: UP045
    overrides: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- config
def _config_groups() -> set[str]:
    """The config groups a run selects (``conf`` is a package: no ``__pycache__``, nor Hydra's own)."""
    return {
        path.name
        for path in CONF_DIR.iterdir()
        if path.is_dir() and path.name != "hydra" and not path.name.startswith(("_", "."))
    }


#: Runs written before the pairwise objectives became one class name their objective by class; the loss
#: each of those classes computed (their hyperparameter keys are unchanged).
LEGACY_PAIRWISE_TARGETS = {
    "rlhf_lab.objectives.DPO": "rlhf_lab.losses.dpo_loss",
    "rlhf_lab.objectives.CPO": "rlhf_lab.losses.cpo_loss",
    "rlhf_lab.objectives.SimPO": "rlhf_lab.losses.simpo_loss",
    "rlhf_lab.objectives.ORPO": "rlhf_lab.losses.orpo_loss",
}


def load_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's resolved config with ``overrides`` applied (``data=jsonl`` swaps the group)."""
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        missing = "no such directory" if not config_file.parent.is_dir() else "no config.yaml"
        raise FileNotFoundError(
            f"run_dir={run_dir}: {missing} (give a finished run's directory: its config.yaml, export/)"
        )
    cfg = OmegaConf.load(config_file)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{config_file} is not a run config (a mapping)")
    legacy_loss = LEGACY_PAIRWISE_TARGETS.get(str(cfg.get("algo", {}).get("_target_")))
    if legacy_loss is not None:
        with open_dict(cfg):
            cfg.algo._target_ = "rlhf_lab.objectives.PairwiseObjective"
            cfg.algo.loss = legacy_loss
    choices, dotted = _group_choices_and_values(cfg, overrides)
    with open_dict(cfg):
        if choices:
            composed = compose_package_config(choices)
            for choice in choices:
                group = choice.partition("=")[0]
                cfg[group] = composed[group]
        if dotted:
            cfg.merge_with(OmegaConf.from_dotlist(dotted))
        # The run may have moved since it was written.
        cfg.paths.run_dir = str(run_dir)
    return cfg


def _group_choices_and_values(cfg: DictConfig, overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``overrides`` split into group choices (``data=jsonl``) and values (``data.eval_batch_size=4``).

    Raises:
        ValueError: An override is not ``key=value``, or sets a key the run's config has no top-level entry
            for (a typo; ``+key=value`` adds one).
    """
    groups = _config_groups()
    choices: list[str] = []
    dotted: list[str] = []
    for override in overrides:
        key, sep, _ = override.lstrip("+").partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {override!r}")
        if key not in groups and not override.startswith("+") and key.split(".")[0] not in cfg:
            raise ConfigError(
                f"{override}: {key.split('.')[0]!r} is neither an option of python -m rlhf_lab.{APP} "
                f"({', '.join(OPTION_KEYS)}) nor a key of the run's config (+{override} adds it)"
            )
        (choices if key in groups else dotted).append(override.lstrip("+"))
    return choices, dotted


# -------------------------------------------------------------------------------------------- weights
def _is_tiny(cfg: DictConfig) -> bool:
    return "tiny" in str(cfg.model.get("_target_", "")).lower()


def build_for_eval(cfg: DictConfig, run_cfg: DictConfig) -> tuple[Any, Any, Any]:
    """The objective, held-out DataModule and tokenizer for ``cfg`` (the run's config plus overrides)."""
    from rlhf_lab.train import build

    # The tiny model's tokenizer and initial weights (the reference) come from the run's training corpus.
    corpus_data = run_cfg.data if cfg.data != run_cfg.data and _is_tiny(run_cfg) else None
    return build(cfg, corpus_data=corpus_data)


def _resolve_weights(run_dir: Path, weights: str, peft: bool) -> Path:
    export, checkpoint = run_dir / "export", run_dir / "checkpoints" / "last.ckpt"
    if weights not in WEIGHT_SOURCES:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"weights={weights} does not exist")
        return path
    if weights == "export" or (weights == "auto" and not peft and (export / "config.json").is_file()):
        if not (export / "config.json").is_file():
            raise FileNotFoundError(f"{export} holds no exported model")
        return export
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"{checkpoint} not found"
            + (" (a LoRA/DoRA run is evaluated from its checkpoint, which keeps the adapter)" if peft else "")
        )
    return checkpoint


def load_weights(objective: Any, source: Path) -> None:
    """Load trained weights into the built objective: a Lightning checkpoint, or an HF export (full models)."""
    objective.configure_model()
    if source.is_file():
        from rlhf_lab.checkpoints import read_checkpoint

        objective.load_trained_state(read_checkpoint(source)["state_dict"], str(source))
        return
    if objective.adapter.is_peft:
        raise ValueError(
            f"{source}: an exported (merged) model cannot be loaded under adapter=lora/dora; use weights=checkpoint"
        )
    # The class the run's model spec loads with (a causal LM, a classifier, a vision-language model).
    trained = objective.model_spec.auto_class(objective.model_task).from_pretrained(source)
    result = objective.policy.model.load_state_dict(trained.state_dict(), strict=False)
    if result.unexpected_keys or result.missing_keys:
        raise ValueError(
            f"{source} does not match the run's model: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    objective.policy.at_initial_weights = False


# ---------------------------------------------------------------------------------------------- steps
def validate(cfg: DictConfig, objective: Any, datamodule: Any) -> dict[str, float]:
    """Lightning's validation loop over the held-out split, on one device, with no logger or checkpoints."""
    from hydra.utils import instantiate

    from rlhf_lab.train import lightning_trainer_config, metric_values

    if not len(datamodule.datasets.get("val", [])):
        log.warning("the held-out split is empty: no validation metrics")
        return {}
    trainer = instantiate(
        lightning_trainer_config(cfg.trainer),
        strategy="auto",
        devices=1,
        num_nodes=1,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        fast_dev_run=False,
    )
    results = trainer.validate(objective, datamodule=datamodule, verbose=False)
    values = metric_values(results[0] if results else {}, "val/")
    # The loop logs under val/; on data.eval_split=test the values are the test split's, named so.
    split = str(cfg.data.get("eval_split", "val"))
    return {f"{split}/{key.removeprefix('val/')}": value for key, value in values.items()}


def _device(cfg: DictConfig) -> torch.device:
    wants_gpu = str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def generate_samples(
    objective: Any, datamodule: Any, tokenizer: Any, count: int, max_new_tokens: int, device: torch.device
) -> list[dict[str, Any]]:
    """Greedy completions of the first ``count`` held-out prompts (reward models: pair scores).

    Each record has ``prompt``, ``chosen`` (the reference completion), ``rejected`` if any, and either
    ``completion`` and ``new_tokens`` (tokens before EOS) or ``chosen_score`` and ``rejected_score``.
    """
    examples = list(datamodule.datasets["val"].examples[:count]) if "val" in datamodule.datasets else []
    if not examples:
        return []
    objective.to(device).eval()
    items = list(enumerate(examples))
    if objective.model_task == "sequence_classification":
        batch = datamodule.collator_for("pairs")(items)
        scores = objective.policy.scores(batch.sequences.to(device)).cpu()
    else:
        ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        completions = greedy_completions(objective, datamodule, items, ids, max_new_tokens)
    records = []
    for index, example in enumerate(examples):
        record: dict[str, Any] = {
            "index": index,
            "prompt": datamodule.readable(tokenizer.decode(example.prompt_ids)),
            "chosen": tokenizer.decode(example.chosen_ids, skip_special_tokens=True),
        }
        if example.rejected_ids is not None:
            record["rejected"] = tokenizer.decode(example.rejected_ids, skip_special_tokens=True)
        if example.images:
            record["images"] = [image.path or f"sha256:{image.digest}" for image in example.images]
        if objective.model_task == "sequence_classification":
            record["chosen_score"] = float(scores[index])
            if example.rejected_ids is not None:
                record["rejected_score"] = float(scores[len(examples) + index])
        else:
            new = completions[index]
            if new and new[-1] == tokenizer.eos_token_id:
                new = new[:-1]
            record["completion"] = tokenizer.decode(new, skip_special_tokens=True)
            record["new_tokens"] = len(new)
        records.append(record)
    return records


def greedy_completions(
    objective: Any, datamodule: Any, items: list[tuple[int, Any]], ids: dict[str, Any], max_new_tokens: int
) -> list[list[int]]:
    """Each item's greedy completion (EOS included), ``data.eval_batch_size`` prompts at a time, with a bar."""
    from rlhf_lab.generation import SamplingConfig
    from rlhf_lab.progress import progress

    greedy, size = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False), datamodule.eval_batch_size
    completions: list[list[int]] = []
    for start in progress(range(0, len(items), size), f"sampling {len(items)} held-out prompts"):
        prompts = datamodule.collator_for("prompts")(items[start : start + size]).sequences
        completions += objective.policy.generate(prompts.to(objective.device), greedy, **ids).completions()
    return completions


def answer_metrics(cfg: DictConfig, samples: list[dict[str, Any]]) -> dict[str, float]:
    """On a suite task (``data=suite``, whose answers are verifiable): ``<split>/generation_accuracy``, the
    share of the greedy ``samples`` giving the right answer, and for ``length_bias`` ``<split>/answer_length``
    (`rlhf_lab.data.suite.generation_metrics`); each sample gets ``correct``. Empty on other data."""
    from rlhf_lab.data.suite import answer_correct, generation_metrics

    source = cfg.data.get("source") or {}
    if not str(source.get("_target_", "")).endswith("SuiteTask") or source.get("rows", "pairs") != "pairs":
        return {}
    task, split = str(source.get("task")), str(cfg.data.get("eval_split", "val"))
    for record in samples:
        record["correct"] = answer_correct(task, record["completion"], record["chosen"])
    completions = [record["completion"] for record in samples]
    return generation_metrics(task, completions, [record["chosen"] for record in samples], split)


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Validate and sample one run; writes ``metrics.json`` and ``samples.jsonl``; returns the metrics.

    Besides the ``val/`` metrics: ``generation/samples`` and ``generation/mean_new_tokens`` (mean length
    in tokens of the greedy completions, EOS excluded; capped at ``max_new_tokens``) for policies, and on a
    suite task the share of them giving the right answer (`answer_metrics`).
    """
    run_dir = Path(options.run_dir)
    run_cfg = load_config(run_dir)
    cfg = load_config(run_dir, options.config_overrides)
    objective, datamodule, tokenizer = build_for_eval(cfg, run_cfg)
    source = _resolve_weights(run_dir, options.weights, objective.adapter.is_peft)
    load_weights(objective, source)
    metrics: dict[str, Any] = validate(cfg, objective, datamodule) if options.validate else {}
    samples = generate_samples(
        objective, datamodule, tokenizer, options.samples, options.max_new_tokens, _device(cfg)
    )
    if samples and "new_tokens" in samples[0]:
        metrics["generation/samples"] = float(len(samples))
        metrics["generation/mean_new_tokens"] = sum(s["new_tokens"] for s in samples) / len(samples)
        metrics.update(answer_metrics(cfg, samples))

    out_dir = Path(options.out_dir) if options.out_dir else run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    with (out_dir / "samples.jsonl").open("w") as file:
        for record in samples:
            file.write(json.dumps(record) + "\n")
    if options.print_report:
        _print_report(run_dir, source, metrics, samples, out_dir)
    # A leaderboard evaluates many runs in one process: free this one's model now.
    del objective, datamodule
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return metrics


def _print_report(
    run_dir: Path, source: Path, metrics: dict[str, Any], samples: list[dict[str, Any]], out_dir: Path
) -> None:
    lines = [f"run directory: {run_dir.resolve()}", f"weights: {source}", "held-out metrics:"]
    lines += [f"  {key:<28} {value:.4f}" for key, value in sorted(metrics.items())]
    for record in samples:
        lines.append(f"--- sample {record['index']}")
        lines.append(f"prompt: {record['prompt']!r}")
        if "completion" in record:
            lines.append(f"completion: {record['completion']!r}")
        else:
            lines.append(
                f"scores: chosen {record['chosen_score']:.3f}, rejected {record.get('rejected_score')}"
            )
    lines.append(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'samples.jsonl'}")
    print("\n".join(lines), flush=True)


OPTION_KEYS = tuple(f.name for f in dataclasses.fields(EvaluateOptions))
register_app(APP, EvaluateOptions, __doc__ or "")


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The app's arguments (its options, ``hydra.*``, flags) and the rest, training overrides."""
    return split_app_arguments(argv, OPTION_KEYS)


def options_from_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> EvalOptions:
    """`EvalOptions` from the app's composed options, with the run-config ``overrides`` after its own.

    Raises:
        ConfigError: A required option (``run_dir``) is missing.
    """
    require(cfg, APP)
    return EvalOptions(
        run_dir=Path(cfg.run_dir),
        weights=str(cfg.weights),
        samples=int(cfg.samples),
        max_new_tokens=int(cfg.max_new_tokens),
        validate=bool(cfg.validate),
        out_dir=Path(cfg.out_dir) if cfg.out_dir else None,
        overrides=[*map(str, cfg.overrides), *overrides],
        split=str(cfg.split) if cfg.split else None,
    )


def parse_args(argv: Sequence[str]) -> EvalOptions:
    """``key=value`` arguments -> options (Hydra's grammar); arguments other than the options are config
    overrides."""
    app, run = split_arguments(argv)
    return options_from_config(compose_app(APP, app), run)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m rlhf_lab.evaluate``; returns the metrics (``{}`` after ``--help`` or ``--cfg``)."""
    from rlhf_lab.cli import quiet_libraries, reported_errors

    app, run = split_arguments(sys.argv[1:] if argv is None else argv)

    def task(cfg: DictConfig) -> dict[str, Any]:
        with reported_errors(ValueError, FileNotFoundError):
            options = options_from_config(cfg, run)
            load_config(options.run_dir)  # a wrong run_dir named before the libraries' imports (seconds)
            quiet_libraries()
            return evaluate(options)

    return run_app(APP, task, app) or {}


if __name__ == "__main__":
    main()
