"""A run's config -> the `Plan` its memory estimate is computed from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlhf_lab.errors import ConfigError
from rlhf_lab.preflight.availability import Located
from rlhf_lab.preflight.memory import Plan
from rlhf_lab.preflight.sizes import ModelSize, auto_class_for, size_of_config, size_of_file, tiny_config

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "float64": 8.0}


def model_size(located: Located, task: str) -> ModelSize | None:
    """The size of a located model: from its config node (built from config) or its ``config.json``."""
    spec = located.source.spec
    if located.where == "built":
        instantiate_checked(spec)  # the spec's own checks (a ConfigError naming the key) before any sizing
        return size_of_config(tiny_config(spec), auto_class_for(task, vision=False))
    if located.config_file is None:
        return None
    trust = bool(spec.get("trust_remote_code", False)) if spec is not None else False
    return size_of_file(located.config_file, task, trust)


def instantiate_checked(node: Any) -> Any:
    """Hydra's `instantiate`, with our own `ConfigError` unwrapped from Hydra's exception."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def stored_bytes(dtype: str, precision: str) -> float:
    """Bytes per stored weight: the model's dtype, unless the precision converts the whole module."""
    if precision in ("bf16-true", "16-true", "bf16", "16", "half"):
        return 2.0
    if precision.startswith("64"):
        return 8.0
    return DTYPE_BYTES.get(dtype, 4.0)


def device_of(cfg: DictConfig) -> str:
    """``cuda`` when the run trains on GPUs, else ``cpu``; a GPU asked for but missing is a `ConfigError`."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible to torch; use trainer.accelerator=cpu "
            "(or auto) or run on a machine with a GPU"
        )
    return "cuda" if cuda and accelerator in ("gpu", "cuda", "auto") else "cpu"


def device_count(cfg: DictConfig, device: str) -> int:
    devices = cfg.trainer.get("devices", 1)
    nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if device == "cuda":
        import torch

        return torch.cuda.device_count() * nodes
    return nodes


def strategy_of(node: Any) -> dict[str, Any]:
    """``deepspeed``, ``shard_stage`` and ``offload`` of a strategy config (``deepspeed`` is popped by `plan_of`)."""
    target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    if target == "zero" and node.get("config_path"):
        try:
            stage = (
                json.loads(Path(node.config_path).read_text()).get("zero_optimization", {}).get("stage", 0)
            )
        except (OSError, ValueError):
            stage = 0
        return {"deepspeed": True, "shard_stage": int(stage), "offload": False}
    if target == "zero":
        offload = bool(node.get("offload_optimizer")) or bool(node.get("offload_parameters"))
        return {"deepspeed": True, "shard_stage": int(node.get("stage", 0)), "offload": offload}
    if target == "fsdp":
        return {"deepspeed": False, "shard_stage": 3, "offload": bool(node.get("cpu_offload"))}
    return {"deepspeed": False, "shard_stage": 0, "offload": False}


def reference_mode(cfg: DictConfig, objective: Any, adapter: Any) -> str:
    """The reference mode the objective will run with (`rlhf_lab.reference.resolve_reference_mode`)."""
    from rlhf_lab.reference import resolve_reference_mode

    algo = cfg.algo
    if "loss" in algo:  # a pairwise objective: a reference when its loss takes reference log-probs
        from rlhf_lab.losses.hyperparameters import tensor_inputs
        from rlhf_lab.objectives.pairwise import resolve_loss

        needs = "reference_chosen_logps" in tensor_inputs(resolve_loss(algo.loss))
    elif "advantage_estimator" in algo:  # online RL: a KL term to the reference when beta > 0
        needs = float(algo.get("beta", 0.0)) > 0
    else:
        try:
            needs = bool(objective.needs_reference.fget(None))  # a constant of the class
        except AttributeError:  # a property that reads the instance: assume a reference (the upper bound)
            needs = True
    return resolve_reference_mode(str(algo.get("reference", "auto")), needs, adapter, objective.__name__)


def batch_shape(cfg: DictConfig, objective: Any) -> tuple[int, int]:
    """(sequences per training step, tokens per sequence at most)."""
    data, algo = cfg.data, cfg.algo
    batch = int(data.batch_size)
    kind = getattr(objective, "batch_kind", "pairs")
    if kind == "prompts":
        length = int(data.get("max_prompt_length") or data.max_length) + int(algo.get("max_new_tokens", 0))
        return batch * int(algo.get("num_generations", 1)), length
    return batch * (1 if kind == "single" else 2), int(data.max_length)


def companions(
    cfg: DictConfig, located: list[Located], plan: Plan, task: str
) -> tuple[dict[str, float], Any]:
    """Frozen companions' weight bytes by name (teacher, reward models) and the value model's size."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    frozen: dict[str, float] = {}
    for loc in located:
        key = loc.source.key
        if key.startswith("teacher.name_or_path") or key.startswith("algo.reward_models"):
            reward = key.startswith("algo.reward")
            size = model_size(loc, "sequence_classification" if reward else "causal_lm")
            dtype = str((loc.source.spec or cfg.model).get("dtype", "float32"))
            if size is not None:
                frozen["teacher" if not reward else f"reward model {key[-2]}"] = size.params * stored_bytes(
                    dtype, precision
                )
    value = None
    if cfg.algo.get("advantage_estimator") == "gae":  # PPO trains a critic beside the policy
        path = [loc for loc in located if loc.source.key == "algo.value_model"]
        value = model_size(path[0], "sequence_classification") if path else plan.policy
    return frozen, value


def plan_of(cfg: DictConfig, located: list[Located]) -> Plan | None:
    """The memory plan of ``cfg`` (None when the policy's config could not be read: no estimate)."""
    from hydra.utils import get_object

    objective = get_object(cfg.algo._target_)
    task = getattr(objective, "model_task", "causal_lm")
    policy = model_size(located[0], task)
    if policy is None:
        log.info("preflight: %s's config is not on disk; no memory estimate", located[0].source.name)
        return None
    adapter = instantiate_checked(cfg.adapter)
    precision = str(cfg.trainer.get("precision", "32-true"))
    weight_bytes = stored_bytes(str(cfg.model.get("dtype", "float32")), precision)
    strategy = strategy_of(cfg.strategy)
    mixed = precision.startswith(("bf16", "16"))
    deepspeed = bool(strategy.pop("deepspeed"))
    if deepspeed and mixed:
        weight_bytes = 2.0  # DeepSpeed casts the model to bf16/fp16 and keeps fp32 master weights
    half = mixed or weight_bytes < 4
    device = device_of(cfg)
    sequences, length = batch_shape(cfg, objective)
    plan = Plan(
        policy=policy,
        weight_bytes=weight_bytes,
        act_bytes=2.0 if half else weight_bytes,
        adapter="lora" if adapter.is_peft else "full",
        lora_rank=int(getattr(adapter, "r", 8)),
        lora_targets=getattr(adapter, "target_modules", "default"),
        dora=bool(getattr(adapter, "use_dora", False)),
        quant_bits=int(cfg.quant.get("bits", 0) or 0),
        optimizer=str(cfg.optim.get("name", "adamw")),
        devices=device_count(cfg, device),
        reference=reference_mode(cfg, objective, adapter),
        sequences=sequences,
        length=length,
        gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),
        eager_attention=cfg.model.get("attn_implementation", "sdpa") == "eager",
        device=device,
        master_weights=deepspeed,
        **strategy,
    )
    frozen, value = companions(cfg, located, plan, task)
    return plan.with_(frozen_models=frozen, value_model=value)


def describe(cfg: DictConfig, plan: Plan) -> str:
    """``<model> (<params> parameters in <dtype>)``, for messages."""
    name = cfg.model.get("name_or_path") or "the model built from config"
    params = plan.policy.params
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    dtype = {8.0: "float64", 4.0: "float32", 2.0: str(cfg.model.get("dtype", "bfloat16"))}[plan.weight_bytes]
    return f"{name} ({count} parameters in {dtype})"
