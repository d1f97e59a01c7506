"""The one function that builds every model of a run: the policy and the companions built beside it.

Objectives do not load models themselves: they say which companions they need (`Companion`: the ``copy``
reference, a teacher, reward models, a value model), and `build_models` loads them all the same way.
Every model is loaded from its own spec (never deep-copied), frozen ones with no gradients and without
gradient checkpointing, and placed like the policy: under DeepSpeed ZeRO-3 each is built partitioned,
under FSDP2 each is sharded, and since they all become submodules of the LightningModule, Lightning
moves and precision-casts them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rlhf_lab.errors import ConfigError, RunStopped, check_choice
from rlhf_lab.strategies import fsdp_options, shard_fsdp2

TASKS = ("causal_lm", "sequence_classification")


class ModelLoadError(RunStopped):
    """A model whose path exists (the preflight checked that) did not load: the message names its config
    key, its path and the cause (bad directory contents, an unknown architecture, not a sequence
    classifier...)."""


def load_error(key: str, role: str, path: str, error: BaseException) -> ModelLoadError:
    """`ModelLoadError`: ``<key>=<path>: the <role> does not load: <cause, on one line>``."""
    from rlhf_lab.models.hub import NotASequenceClassifier

    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    cause = text if isinstance(error, NotASequenceClassifier) else f"{type(error).__name__}: {text}"
    return ModelLoadError(f"{key}={path!r}: the {role} does not load: {cause}")


@dataclass
class Companion:
    """A model built beside the policy from its own spec.

    Attributes:
        spec: Its model spec (`HubModel`, `TinyModel`: a hub id, a local directory, a tiny model).
        task: ``causal_lm`` (reference, teacher) or ``sequence_classification`` (reward and value models).
        trainable: Trains with the policy (a value model); frozen otherwise.
        same_vocabulary: Must tokenise exactly like the policy (a teacher whose logits are compared
            token for token with the student's).
        load_kwargs: Extra ``from_pretrained`` arguments (the policy's quantisation, for a ``copy`` reference
            of a quantised policy).
        key: The config key that names it (``teacher.name_or_path``, ``algo.reward_models[0]``), for messages.
        role: What it is, for messages (``teacher``, ``reward model``).
    """

    spec: Any
    task: str = "causal_lm"
    trainable: bool = False
    same_vocabulary: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = "model.name_or_path"
    role: str = "model"

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)


@dataclass
class BuiltModels:
    """What `build_models` returns.

    Attributes:
        policy: The trainable policy model (adapter applied).
        companions: Each requested companion, by name, loaded (and sharded) like the policy.
        tokenizers: Each companion's own tokenizer, by name.
        deepspeed_config: Under ZeRO-3, transformers' handle that makes later loads partitioned too; keep
            it alive as long as the models.
    """

    policy: nn.Module
    companions: dict[str, nn.Module]
    tokenizers: dict[str, Any]
    deepspeed_config: Any = None


def check_same_vocabulary(
    name: str, tokenizer: Any, spec: Any, policy_tokenizer: Any, policy_spec: Any
) -> None:
    """Fail unless ``tokenizer`` maps every token to the same id as the policy's tokenizer."""
    if tokenizer.get_vocab() == policy_tokenizer.get_vocab():
        return
    raise ConfigError(
        f"the {name} and the policy must share a vocabulary: the {name}'s tokenizer "
        f"({spec.name_or_path}) has {len(tokenizer)} tokens, the policy's ({policy_spec.name_or_path}) has "
        f"{len(policy_tokenizer)}"
        + ("" if len(tokenizer) != len(policy_tokenizer) else ", with different ids for the same tokens")
    )


def load_companions(
    companions: Mapping[str, Companion], policy_spec: Any
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Each companion's model (frozen ones without gradients, checkpointing or dropout) and tokenizer, by
    name; a ``same_vocabulary`` companion's tokenizer checked against the policy's."""
    loaded: dict[str, nn.Module] = {}
    tokenizers: dict[str, Any] = {}
    policy_tokenizer = None
    for name, companion in companions.items():
        # A frozen sequence classifier (a reward model) must bring its score head: a new one scores at random.
        head = companion.task == "sequence_classification" and not companion.trainable
        extra = {"require_head": True} if head else {}
        try:
            model = companion.spec.load_model(task=companion.task, **extra, **companion.load_kwargs)
            tokenizers[name] = companion.spec.load_tokenizer()
        except (ConfigError, RunStopped):
            raise
        except Exception as error:
            path = str(getattr(companion.spec, "name_or_path", "?"))
            raise load_error(companion.key, companion.role, path, error) from error
        if not companion.trainable:
            if companion.spec.gradient_checkpointing:
                model.gradient_checkpointing_disable()  # no backward runs through a frozen model
            model.requires_grad_(False).eval()
        if companion.same_vocabulary:
            policy_tokenizer = policy_tokenizer or policy_spec.load_tokenizer()
            check_same_vocabulary(name, tokenizers[name], companion.spec, policy_tokenizer, policy_spec)
        loaded[name] = model
    return loaded, tokenizers


def build_models(
    policy_spec: Any,
    adapter: Any,
    quant: Any,
    *,
    task: str = "causal_lm",
    companions: Mapping[str, Companion] | None = None,
    strategy: Any = None,
    device_mesh: Any = None,
) -> BuiltModels:
    """Load the policy and its companions.

    Args:
        policy_spec: The policy's model spec.
        adapter: Turns the loaded base into the trainable policy (`FullFinetune`, `LoraAdapter`).
        quant: Quantisation of the policy's base weights (`rlhf_lab.quant`).
        task: The policy's task: ``causal_lm`` or ``sequence_classification`` (reward-model training).
        companions: The companions to build, by name.
        strategy: The Lightning strategy (ZeRO-3 builds partitioned, FSDP2 shards), or None.
        device_mesh: The device mesh of an FSDP2 strategy.

    Returns:
        `BuiltModels`.
    """
    check_choice("task", task, TASKS)
    deepspeed_config = None
    if strategy is not None and getattr(strategy, "zero_stage_3", False):
        # Tell transformers that ZeRO-3 is on: it then builds each model partitioned and loads its weights
        # shard by shard.
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed_config = HfDeepSpeedConfig(strategy.config)
    try:
        base = policy_spec.load_model(task=task, **quant.load_kwargs())
    except (ConfigError, RunStopped):
        raise
    except Exception as error:
        path = str(getattr(policy_spec, "name_or_path", "?"))
        raise load_error("model.name_or_path", "policy", path, error) from error
    base = quant.prepare(base, policy_spec.gradient_checkpointing)
    frozen, train_in_full = policy_spec.adapter_plan(base)
    policy = adapter.apply(base, task=task, frozen=frozen, train_in_full=train_in_full)

    loaded, tokenizers = load_companions(companions or {}, policy_spec)
    options = fsdp_options(strategy) if strategy is not None else None
    if options is not None:
        # Shard every model alike: no rank holds a full copy of the reference, the teacher or a reward model.
        policy = shard_fsdp2(policy, device_mesh, options)
        loaded = {name: shard_fsdp2(model, device_mesh, options) for name, model in loaded.items()}
    return BuiltModels(
        policy=policy, companions=loaded, tokenizers=tokenizers, deepspeed_config=deepspeed_config
    )
