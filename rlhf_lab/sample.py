"""Best-of-N and rejection sampling: N completions per prompt, scored by online RL's rewards; the best as SFT
data, best-vs-worst (or best-vs-random) pairs as preference data.

    python -m rlhf_lab.sample out_dir=bon num_samples=8 reward_functions=[rlhf_lab.rewards.exact_match]
        [model=tiny data=synthetic_rl | run_dir=<a run> [weights=auto|export|checkpoint|<path>]]
        [pairs=best_vs_worst|best_vs_random] [reward_models=[<reward model export>]] [reward_weights=null]
        [min_reward=null] [max_new_tokens=32] [temperature=1.0] [top_p=1.0] [top_k=0] [split=train]
        [max_prompts=null] [batch_size=8] [chunk_size=32] [any training override: seed=1, data.*=...]

A Hydra app (``--help`` lists the options, ``--cfg job`` prints them); it writes nothing but its outputs.
The model and prompts are a training run's: ``model=``/``data=`` (and any other training override) compose
the package's config as ``python -m rlhf_lab`` would, or ``run_dir=`` samples from a finished run (its
config; its export, or its checkpoint for LoRA/DoRA). The prompts are the data's ``split`` (any layout with
a prompt; its extra columns, such as ``answer``, reach the reward functions). Sampling and scoring are
online RL's own (`rlhf_lab.objectives.OnlineObjective`: ``reward_functions``, ``reward_models``,
``reward_weights``, ``reward_timeout``, ``reward_errors`` are its ``algo.*`` keys): sample ``j`` of prompt
``i`` is seeded by ``seed``, ``i`` and ``j`` alone.

Writes to ``out_dir``: ``sft.jsonl`` (TRL's prompt-completion rows: each prompt's best completion, where its
reward reaches ``min_reward``), ``pairs.jsonl`` (prompt/chosen/rejected; a prompt whose N rewards all agree
gives none: ``ties``), ``samples.jsonl`` (every completion, its rewards and the choice), ``model.json``
(the model sampled from, for a stage chain: `rlhf_lab.stages`), and
``summary.json`` (counts; ``reward/first_mean``, the mean reward of N=1, the first sample, against
``reward/best_mean``, best-of-N; ``reward/std``). Read them back with
``data=jsonl data.source.train_path=<out_dir>/sft.jsonl`` (or ``pairs.jsonl``): the layouts are detected.

Resumable: prompts are sampled ``chunk_size`` at a time, each chunk written whole and renamed into place
(`rlhf_lab.sampling.store`); the same command started again samples only the missing chunks, never a prompt
twice, and writes what an uninterrupted run writes, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from rlhf_lab.atomic import atomic_write_text
from rlhf_lab.config import compose_package_config
from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.launch import register_app, require, run_app, split_app_arguments
from rlhf_lab.leaderboard.resumable import die_with_parent
from rlhf_lab.rewards import completion_text
from rlhf_lab.sampling.select import PAIR_MODES, choose, pair_row, sft_row, summarize
from rlhf_lab.sampling.store import ChunkStore

APP = "sample"
#: The seed stream of best-of-N draws (training's rollouts draw from others).
STREAM = "sample"
WEIGHT_SOURCES = ("auto", "export", "checkpoint")
#: The online objective's keys the options set (option -> ``algo.*`` key).
ALGO_KEYS = {
    "reward_functions": "reward_functions",
    "reward_models": "reward_models",
    "reward_weights": "reward_weights",
    "reward_timeout": "reward_timeout",
    "reward_errors": "reward_errors",
    "num_samples": "num_generations",
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
}


@dataclass
class SampleOptions:
    """``python -m rlhf_lab.sample``'s options (``???``: required). Other arguments are training overrides.

    Attributes:
        out_dir: Where the outputs (and the chunks a resumed run continues from) go.
        run_dir: Sample from this finished run (its config and weights); None: the composed config's model.
        weights: With ``run_dir``: ``auto`` (the export; LoRA/DoRA: the checkpoint), ``export``,
            ``checkpoint``, or a ``.ckpt`` file or export directory.
        num_samples: Completions per prompt (N).
        pairs: ``best_vs_worst`` or ``best_vs_random`` (seeded; among those rewarded below the best).
        reward_functions: Import paths (or ``{_target_: ...}``) of reward functions, as online RL takes them.
        reward_models: Sequence-classifier reward models (directories or hub ids).
        reward_weights: One weight per reward, functions first (None: all 1).
        reward_timeout: Seconds one reward-function call may take (None: no limit).
        reward_errors: ``stop`` or ``skip`` (drop the prompts a reward failed on; counted).
        min_reward: SFT rows only where the best reward reaches this (None: every prompt's best).
        max_new_tokens, temperature, top_p, top_k: Sampling.
        split: The data split whose prompts are sampled (``train`` or ``val``).
        max_prompts: The first this many prompts of the split (None: all).
        batch_size: Prompts per generation call (x ``num_samples`` rows).
        chunk_size: Prompts per chunk file (the unit a resumed run skips).
    """

    out_dir: str = MISSING
    run_dir: Optional[str] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    weights: str = "auto"
    num_samples: int = 4
    pairs: str = "best_vs_worst"
    reward_functions: list[Any] = field(default_factory=list)
    reward_models: list[str] = field(default_factory=list)
    reward_weights: Optional[list[float]] = None  # noqa: UP045
    reward_timeout: Optional[float] = 60.0  # noqa: UP045
    reward_errors: str = "stop"
    min_reward: Optional[float] = None  # noqa: UP045
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    split: str = "train"
    max_prompts: Optional[int] = None  # noqa: UP045
    batch_size: int = 8
    chunk_size: int = 32


OPTION_KEYS = tuple(f.name for f in dataclasses.fields(SampleOptions))
register_app(APP, SampleOptions, __doc__ or "")


def check_options(options: DictConfig) -> None:
    """Fail early, naming the option, on values no sampling run can take."""
    require(options, APP)
    check_range("num_samples", options.num_samples, 2)  # best-of-1 chooses nothing
    check_choice("pairs", options.pairs, PAIR_MODES)
    check_choice("split", options.split, ("train", "val"))
    check_range("batch_size", options.batch_size, 1)
    check_range("chunk_size", options.chunk_size, 1)
    if options.max_prompts is not None:
        check_range("max_prompts", options.max_prompts, 1)
    if options.run_dir is None and options.weights != "auto":
        raise ConfigError(f"weights={options.weights} names a run's weights: give run_dir=<the run> too")
    if not options.reward_functions and not options.reward_models:
        raise ConfigError(
            "sampling needs a reward: set reward_functions (e.g. [rlhf_lab.rewards.exact_match]) and/or "
            "reward_models (e.g. [<run dir of algo=reward>/export])"
        )


# --------------------------------------------------------------------------------------------- config
def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The app's arguments (its options, ``hydra.*``, flags) and the rest, training overrides."""
    return split_app_arguments(argv, OPTION_KEYS)


def sampling_config(options: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, DictConfig | None]:
    """The config to build the sampler from (the online objective with the options' rewards and sampling),
    and the run's own config with ``run_dir`` (its tiny model's corpus), else None."""
    from hydra.errors import HydraException

    from rlhf_lab.evaluate import load_config

    chosen = ["algo=grpo", *overrides]
    try:
        if options.run_dir is not None:
            run_cfg = load_config(options.run_dir)
            cfg = load_config(options.run_dir, chosen)
        else:
            run_cfg, cfg = None, compose_package_config(chosen)
    except HydraException as error:  # a training override that does not compose (a typo, a missing option)
        raise ConfigError(f"{' '.join(overrides)}: {str(error).strip()}") from None
    with open_dict(cfg):
        for option, key in ALGO_KEYS.items():
            cfg.algo[key] = options[option]
        cfg.algo.beta = 0.0  # no reference model: nothing is trained
        if options.run_dir is None:
            cfg.paths.run_dir = str(options.out_dir)
    return cfg, run_cfg


def settings(options: DictConfig, cfg: DictConfig) -> dict[str, Any]:
    """What the records depend on (a resumed run must match): the options but ``out_dir``, and the model,
    data and seed."""
    own = OmegaConf.to_container(options, resolve=True)
    assert isinstance(own, dict)
    own.pop("out_dir", None)
    parts = {}
    for key in ("model", "data"):
        try:
            parts[key] = OmegaConf.to_container(cfg[key], resolve=True)
        except Exception:  # an interpolation only a training run resolves: compare as written
            parts[key] = OmegaConf.to_container(cfg[key], resolve=False)
    return {**own, **parts, "seed": cfg.seed}


# -------------------------------------------------------------------------------------------- the model
def weights_source(run_dir: Path, weights: str, peft: bool) -> Path:
    """The trained weights of ``run_dir`` that ``weights`` names (as `rlhf_lab.evaluate` resolves them)."""
    export, checkpoint = run_dir / "export", run_dir / "checkpoints" / "last.ckpt"
    if weights not in WEIGHT_SOURCES:
        if not Path(weights).exists():
            raise FileNotFoundError(f"weights={weights} does not exist")
        return Path(weights)
    if weights == "export" or (weights == "auto" and not peft and (export / "config.json").is_file()):
        if not (export / "config.json").is_file():
            raise FileNotFoundError(f"{export} holds no exported model")
        return export
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found (and {export} holds no usable export)")
    return checkpoint


def build_sampler(
    options: DictConfig, cfg: DictConfig, run_cfg: DictConfig | None
) -> tuple[Any, Any, Path | None]:
    """The online objective (policy and reward models built, trained weights loaded), its DataModule, and the
    run's weights loaded (None: the model spec's own)."""
    from rlhf_lab.evaluate import build_for_eval, load_weights
    from rlhf_lab.train import build

    source = None
    try:
        if run_cfg is None:
            objective, datamodule, _ = build(cfg)
            objective.configure_model()
        else:
            objective, datamodule, _ = build_for_eval(cfg, run_cfg)
            source = weights_source(Path(options.run_dir), str(options.weights), objective.adapter.is_peft)
            load_weights(objective, source)
    except ConfigError as error:  # the options' names, not the online objective's algo.* keys
        message = str(error)
        for option, key in ALGO_KEYS.items():
            message = message.replace(f"algo.{key}", option)
        raise ConfigError(message) from None
    wants_gpu = str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
    return objective.to(device).eval(), datamodule, source


# ------------------------------------------------------------------------------------------- sampling
def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


@torch.no_grad()
def sample_prompts(
    objective: Any, datamodule: Any, items: list[tuple[int, Any]], options: DictConfig
) -> list[dict[str, Any]]:
    """One record per prompt of ``items`` (dataset index, example): its N completions, their rewards and
    the choice (`rlhf_lab.sampling.select.choose`)."""
    n, records = int(options.num_samples), []
    for start in range(0, len(items), int(options.batch_size)):
        batch = datamodule.collator_for("prompts")(items[start : start + int(options.batch_size)])
        batch = dataclasses.replace(batch, sequences=batch.sequences.to(objective.device))
        generation = objective.sample(batch, objective.sampling, n, STREAM, 0)
        decoded = objective.decode(batch, generation, n)
        scores = objective.score_completions(decoded, n)
        kept = objective.settle_rewards(decoded, scores, n, "sample")
        rewards = objective.scorer.combine(scores.per_reward).cpu().tolist()
        per_reward = scores.per_reward.cpu().tolist()
        truncated = generation.truncated.cpu().tolist()
        for b, index in enumerate(batch.index.tolist()):
            rows = range(b * n, (b + 1) * n)
            scored = kept is None or bool(kept[b * n])
            record: dict[str, Any] = {
                "index": index,
                "prompt": decoded.prompts[b * n],
                "columns": {name: values[b * n] for name, values in decoded.columns.items()},
                "completions": [decoded.completions[r] for r in rows],
                "truncated": [bool(truncated[r]) for r in rows],
                "blank": [not completion_text(decoded.completions[r]).strip() for r in rows],
                "rewards": [rewards[r] for r in rows] if scored else None,
                "per_reward": {
                    name: [_finite(per_reward[r][c]) for r in rows] if scored else None
                    for c, name in enumerate(objective.reward_names)
                },
                "best": None,
                "rejected": None,
                "keep": False,
            }
            if scored:
                seed = objective.derived_seed("pairs", index)
                choice = choose(record["rewards"], str(options.pairs), seed, record["blank"])
                record.update(best=choice.best, rejected=choice.rejected)
                record["keep"] = choice.best is not None and (
                    options.min_reward is None or record["rewards"][choice.best] >= float(options.min_reward)
                )
                texts = record["completions"]
                if choice.rejected is not None and texts[choice.rejected] == texts[choice.best]:
                    record["rejected"] = None  # one text, two token sequences: no preference to learn
            records.append(record)
    return records


def prompt_items(datamodule: Any, options: DictConfig) -> list[tuple[int, Any]]:
    """(dataset index, example) of the prompts to sample."""
    dataset = datamodule.datasets.get(str(options.split))
    examples = list(dataset.examples) if dataset is not None else []
    if not examples:
        raise ConfigError(f"split={options.split}: the data has no {options.split} prompts")
    limit = options.max_prompts
    return list(enumerate(examples))[: int(limit) if limit is not None else None]


def write_model_record(out_dir: Path, objective: Any, cfg: DictConfig, source: Path | None) -> None:
    """``model.json``: the model sampled from (``name_or_path``: a directory or hub id that loads it; null for
    a LoRA/DoRA checkpoint), for a stage chain to train next. ``built``: built from config (``model=tiny``,
    whose tokenizer and weights derive from the data: a stage on other data must load this directory
    rather than build its own)."""
    from rlhf_lab.models.tiny import TinyModel

    spec = objective.model_spec
    loadable = str(spec.name_or_path) if source is None else str(source) if source.is_dir() else None
    record = {
        "name_or_path": loadable,
        "built": source is None and isinstance(spec, TinyModel),
        "dtype": str(cfg.model.get("dtype", "float32")),
        "attn_implementation": str(cfg.model.get("attn_implementation", "sdpa")),
        "target": str(cfg.model.get("_target_", "")),
    }
    atomic_write_text(out_dir / "model.json", json.dumps(record, indent=2) + "\n")


def write_outputs(out_dir: Path, records: list[dict[str, Any]], num_samples: int) -> dict[str, Any]:
    """``sft.jsonl``, ``pairs.jsonl``, ``samples.jsonl`` and ``summary.json`` (each swapped in whole)."""
    sft = [sft_row(r) for r in records if r["best"] is not None and r["keep"]]
    pairs = [pair_row(r) for r in records if r["rejected"] is not None]
    for name, rows in (("sft.jsonl", sft), ("pairs.jsonl", pairs), ("samples.jsonl", records)):
        atomic_write_text(out_dir / name, "".join(json.dumps(row) + "\n" for row in rows))
    summary = summarize(records, num_samples)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def run_sampling(options: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Sample, score and choose for every prompt (the chunks already written are kept); returns the summary."""
    check_options(options)
    cfg, run_cfg = sampling_config(options, overrides)
    store = ChunkStore(Path(options.out_dir))
    store.check_settings(settings(options, cfg))
    store.remove_partial()
    objective, datamodule, source = build_sampler(options, cfg, run_cfg)
    write_model_record(Path(options.out_dir), objective, cfg, source)
    items = prompt_items(datamodule, options)
    size = int(options.chunk_size)
    chunks = range((len(items) + size - 1) // size)
    done = store.done()
    if done & set(chunks):
        print(
            f"sample: resuming: {len(done & set(chunks))} of {len(chunks)} chunks already written", flush=True
        )
    from rlhf_lab.progress import progress

    for index in progress([c for c in chunks if c not in done], f"sampling {len(items)} prompts", "chunk"):
        store.write(
            index, sample_prompts(objective, datamodule, items[index * size : (index + 1) * size], options)
        )
    records = [record for index in chunks for record in store.read(index)]
    return write_outputs(Path(options.out_dir), records, int(options.num_samples))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m rlhf_lab.sample``; returns the summary (``{}`` after ``--help`` or ``--cfg``)."""
    from rlhf_lab.cli import quiet_libraries, reported_errors

    app, run = split_arguments(sys.argv[1:] if argv is None else argv)

    def task(cfg: DictConfig) -> dict[str, Any]:
        with reported_errors(ValueError, FileNotFoundError):
            check_options(cfg)
            die_with_parent()  # a stage chain's child: killed with the chain (it resumes from its chunks)
            quiet_libraries()
            summary = run_sampling(cfg, run)
        print(json.dumps({"out_dir": str(cfg.out_dir), **summary}), flush=True)
        return summary

    return run_app(APP, task, app) or {}


if __name__ == "__main__":
    main()
