"""Strategy configs -> Lightning strategies: DDP, FSDP2, DeepSpeed ZeRO-2/3.

FSDP2 (``fully_shard`` per decoder layer, then the root) runs through Lightning's `ModelParallelStrategy`;
the objective shards the policy and the frozen reference in its ``configure_model`` (`shard_fsdp2`), so no
rank ever holds a full unsharded reference. DeepSpeed runs through Lightning's `DeepSpeedStrategy` with a
config generated from ours (stage, offload, precision, clipping and accumulation taken from the trainer so
the two never disagree). Lightning refuses DeepSpeed on a CPU; `CPUDeepSpeedStrategy`, used only where no
GPU exists, lifts that with DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``).

Both write sharded checkpoints (a directory, every rank its shards) atomically: into a staging directory
renamed into place once complete (`rlhf_lab.checkpoints.atomic_directory_save`), removed by a rename first,
so a kill mid-save or mid-removal never leaves a checkpoint that looks complete and is not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rlhf_lab.errors import ConfigError, check_choice


def auto() -> str:
    """Let Lightning choose (single device, or DDP when ``trainer.devices > 1``)."""
    return "auto"


def ddp(find_unused_parameters: bool = False, start_method: str = "popen") -> Any:
    """Distributed data parallel; gloo on CPU, nccl on GPU (Lightning picks the backend)."""
    from lightning.pytorch.strategies import DDPStrategy

    check_choice("strategy.start_method", start_method, ("popen", "spawn"))
    return DDPStrategy(
        find_unused_parameters=find_unused_parameters,
        start_method="spawn" if start_method == "spawn" else "popen",
    )


class FSDPSpec:
    """FSDP2 options; the Lightning strategy is built once the trainer's device count is known.

    Args:
        mixed_precision: ``bf16`` / ``fp16`` parameter dtype for compute (reductions in fp32), or None.
        cpu_offload: Keep sharded parameters (and gradients, optimiser state) on the CPU.
        reshard_after_forward: Free gathered parameters after forward (ZeRO-3 style) or keep them (ZeRO-2).
    """

    def __init__(
        self,
        mixed_precision: str | None = None,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
    ) -> None:
        check_choice("strategy.mixed_precision", mixed_precision, (None, "bf16", "fp16"))
        self.options = {
            "mixed_precision": mixed_precision,
            "cpu_offload": cpu_offload,
            "reshard_after_forward": reshard_after_forward,
        }

    def build(self, trainer_cfg: Any) -> Any:
        devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1))
        if not isinstance(devices, int):
            raise ConfigError(f"strategy=fsdp needs trainer.devices as a number; got {devices!r}")
        strategy = _atomic_model_parallel_class()(data_parallel_size=devices * nodes, tensor_parallel_size=1)
        # Read by the objective's configure_model (shard_fsdp2).
        strategy.rlhf_lab_fsdp = self.options  # type: ignore[attr-defined]
        return strategy


def _atomic_model_parallel_class() -> type:
    from lightning.pytorch.strategies import ModelParallelStrategy

    from rlhf_lab.checkpoints import AtomicDirectoryCheckpoints

    class AtomicModelParallelStrategy(AtomicDirectoryCheckpoints, ModelParallelStrategy):
        """Lightning's `ModelParallelStrategy` (FSDP2), its distributed checkpoints written atomically."""

        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            path = Path(self.broadcast(str(checkpoint_path)))
            if not path.is_dir():
                return super().load_checkpoint(checkpoint_path, weights_only)  # type: ignore[no-any-return]
            assert self.lightning_module is not None  # loading happens inside fit
            return load_sharded_checkpoint(self.lightning_module, self.optimizers, path)

    return AtomicModelParallelStrategy


def load_sharded_checkpoint(module: torch.nn.Module, optimizers: list[Any], path: Path) -> dict[str, Any]:
    """Load an FSDP2 distributed checkpoint (Lightning's layout: ``state_dict.*``, ``optimizer_<i>.*``,
    ``meta.pt``) into ``module`` and ``optimizers``; returns the rest of the checkpoint (``meta.pt``).

    Lightning's own load asks the checkpoint for every weight of the module, and the checkpoints hold the
    trainable ones only (frozen weights come back from the model specs): it fails on the first frozen key.
    This asks for the weights the checkpoint holds; `AlignmentObjective.on_load_checkpoint`'s key check does
    not run on a sharded checkpoint, so the saved keys are checked against the trainable ones here.
    Collective: every rank calls it.
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from rlhf_lab.checkpoints import read_checkpoint

    saved = {
        key.removeprefix("state_dict.")
        for key in FileSystemReader(str(path)).read_metadata().state_dict_metadata
        if key.startswith("state_dict.")
    }
    checker = getattr(module, "check_checkpoint_keys", None)
    if checker is not None:
        checker(saved, str(path))
    weights = {"state_dict": {k: v for k, v in get_model_state_dict(module).items() if k in saved}}
    load(weights, checkpoint_id=path)
    module.load_state_dict(weights["state_dict"], strict=False)
    for index, optimizer in enumerate(optimizers):
        key = f"optimizer_{index}"
        state = {key: get_optimizer_state_dict(module, optimizer)}
        load(state, checkpoint_id=path)
        set_optimizer_state_dict(
            module, optimizer, optim_state_dict=state[key], options=StateDictOptions(cpu_offload=True)
        )
    return read_checkpoint(path / "meta.pt")


def fsdp(
    mixed_precision: str | None = None, cpu_offload: bool = False, reshard_after_forward: bool = True
) -> FSDPSpec:
    """FSDP2 via Lightning's `ModelParallelStrategy` (data parallel; tensor parallel size 1)."""
    return FSDPSpec(mixed_precision, cpu_offload, reshard_after_forward)


def fsdp_options(strategy: Any) -> dict[str, Any] | None:
    """The FSDP2 options if ``strategy`` is our FSDP2 strategy, else None."""
    return getattr(strategy, "rlhf_lab_fsdp", None)


def shard_fsdp2(model: torch.nn.Module, mesh: Any, options: dict[str, Any]) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the whole model, over the data-parallel mesh."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {
        "mesh": mesh["data_parallel"],
        "reshard_after_forward": options["reshard_after_forward"],
    }
    if options["mixed_precision"]:
        dtype = torch.bfloat16 if options["mixed_precision"] == "bf16" else torch.float16
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if options["cpu_offload"]:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    from rlhf_lab.logprobs import backbone_and_score_head, decoder_and_head

    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ConfigError(f"strategy=fsdp found no *DecoderLayer modules in {type(model).__name__} to shard")
    for layer in layers:
        fully_shard(layer, **kwargs)
    # The policy calls the decoder and the output head directly (the head only at completion positions),
    # never the root's forward. FSDP2 initialises (and reduce-scatters gradients for) the tree whose
    # forward is called, so the decoder and the head are the two roots; the model itself is not wrapped.
    try:
        decoder, head = decoder_and_head(model)
    except ConfigError:  # a sequence classifier (reward or value model): decoder plus its score head
        decoder, head = backbone_and_score_head(model)
    fully_shard(decoder, **kwargs)
    fully_shard(head, **kwargs)
    return model


def deepspeed_config(
    stage: int,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    precision: str = "32-true",
    gradient_clip_val: float | None = None,
    accumulate_grad_batches: int = 1,
    micro_batch_size: int = 1,
) -> dict[str, Any]:
    """A DeepSpeed config consistent with the trainer's precision, clipping and accumulation.

    Args:
        stage: ZeRO stage (2 or 3).
        offload_optimizer: Optimiser state (and ZeRO-3 gradients) on the CPU.
        offload_parameters: ZeRO-3 parameters on the CPU.
        precision: The trainer's precision (``bf16-mixed``, ``16-mixed``, ``32-true`` ...).
        gradient_clip_val: The trainer's gradient clipping (DeepSpeed clips internally).
        accumulate_grad_batches: The trainer's accumulation (Lightning writes it into the config itself;
            accepted here so the signature mirrors the trainer).
        micro_batch_size: Per-device batch (DeepSpeed wants it for its throughput bookkeeping).
    """
    check_choice("strategy.stage", stage, (2, 3))
    if offload_parameters and stage != 3:
        raise ConfigError(
            "strategy.offload_parameters=true needs strategy.stage=3 (ZeRO-2 does not partition "
            "parameters); use strategy=zero3_offload"
        )
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_clipping": float(gradient_clip_val or 0.0),
        "zero_allow_untested_optimizer": True,
    }
    if precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
    elif precision.startswith("16"):
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def _atomic_deepspeed_class() -> type:
    from rlhf_lab.checkpoints import AtomicDirectoryCheckpoints
    from rlhf_lab.lightning_compat import DeepSpeedEngineHook

    class AtomicDeepSpeedStrategy(AtomicDirectoryCheckpoints, DeepSpeedEngineHook):
        """Lightning's `DeepSpeedStrategy`, its checkpoint directories written atomically."""

    return AtomicDeepSpeedStrategy


def _cpu_deepspeed_class() -> type:
    from lightning.fabric.utilities.seed import reset_seed
    from lightning.pytorch.strategies import DDPStrategy

    from rlhf_lab.lightning_compat import init_deepspeed_distributed

    class CPUDeepSpeedStrategy(_atomic_deepspeed_class()):  # type: ignore[misc]
        """DeepSpeed on DeepSpeed's CPU accelerator (tests and laptops); Lightning allows CUDA only."""

        @property
        def root_device(self) -> torch.device:
            # DeepSpeed reads the device index as the rank's device; CPU tensors ignore the index.
            return torch.device("cpu", self.local_rank)

        def setup_environment(self) -> None:
            DDPStrategy.setup_environment(self)

        def setup_distributed(self) -> None:
            reset_seed()
            self.set_world_ranks()
            init_deepspeed_distributed(self)

        def initialize_engine(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> Any:
            import argparse

            import deepspeed

            engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self.local_rank),
                config=self.config,
                model=model,
                model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
                dist_init_required=False,
            )
            return engine, deepspeed_optimizer

    return CPUDeepSpeedStrategy


class DeepSpeedSpec:
    """A DeepSpeed strategy whose config is completed from the trainer settings at build time.

    Args:
        stage: ZeRO stage (2 or 3).
        offload_optimizer: Optimiser state on the CPU.
        offload_parameters: ZeRO-3 parameters on the CPU.
        config_path: A user's own DeepSpeed JSON (``strategy=deepspeed``); replaces the generated config.
    """

    def __init__(
        self,
        stage: int = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        config_path: str | None = None,
    ) -> None:
        self.stage = stage
        self.offload_optimizer = offload_optimizer
        self.offload_parameters = offload_parameters
        self.config_path = config_path
        if config_path is None:
            deepspeed_config(stage, offload_optimizer, offload_parameters)  # validate early
        elif not Path(config_path).exists():
            raise ConfigError(f"strategy.config_path={config_path} does not exist")

    def build(self, trainer_cfg: Any, micro_batch_size: int) -> Any:
        if self.config_path is not None:
            config = json.loads(Path(self.config_path).read_text())
        else:
            config = deepspeed_config(
                self.stage,
                self.offload_optimizer,
                self.offload_parameters,
                precision=str(trainer_cfg.get("precision", "32-true")),
                gradient_clip_val=trainer_cfg.get("gradient_clip_val"),
                accumulate_grad_batches=int(trainer_cfg.get("accumulate_grad_batches", 1)),
                micro_batch_size=micro_batch_size,
            )
        if torch.cuda.is_available():
            return _atomic_deepspeed_class()(config=config)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return _cpu_deepspeed_class()(config=config, process_group_backend="gloo")


def zero(
    stage: int = 2,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    config_path: str | None = None,
) -> DeepSpeedSpec:
    """DeepSpeed ZeRO (``strategy=zero2``, ``zero3``, ``zero3_offload``, ``deepspeed``)."""
    return DeepSpeedSpec(stage, offload_optimizer, offload_parameters, config_path)


def resolve(strategy: Any, trainer_cfg: Any, micro_batch_size: int) -> Any:
    """Turn an instantiated strategy config into what ``lightning.Trainer(strategy=...)`` takes."""
    if isinstance(strategy, DeepSpeedSpec):
        return strategy.build(trainer_cfg, micro_batch_size)
    if isinstance(strategy, FSDPSpec):
        return strategy.build(trainer_cfg)
    return strategy
