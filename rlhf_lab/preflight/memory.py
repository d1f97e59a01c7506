"""The memory a run needs, per device, before any model loads.

With ``P`` the policy's parameters, ``T`` its trainable ones (all under ``adapter=full``, a vision tower
excepted; the LoRA factors under ``adapter=lora``), ``b`` bytes per stored weight (the model's ``dtype``;
2 under ``trainer.precision=bf16-true``/``16-true``) and ``N`` the devices a sharding strategy spreads over:

    weights      P * b; quant=nf4 packs the linear layers to ~0.53 byte/param (4 bits + block scales),
                 int8 to ~1.03; embeddings and the output head stay at b
    gradients    T * b                                          (ZeRO-2/3, FSDP: / N)
    optimiser    adamw: T * 2b (two moments like the weights: 8 bytes/param in fp32); adamw_8bit and
                 paged_adamw_8bit: T * 2; DeepSpeed ZeRO: T * 12 (an fp32 master partition and fp32 moments,
                 whatever the weights' dtype)
                                                                (ZeRO-1/2/3, FSDP: / N; offload: CPU RAM)
    reference    algo.reference=copy only: the policy's weights again (none when reference-free, adapter_off
                 under LoRA, precomputed: one pass before training, no model kept)
    teacher, reward models: their weights; PPO's value model: weights + gradients + optimiser
    activations  S * L * layers * (17 h + 4 i + 2 kv) * a  (saved for backward: norms, q/k/v/o, rotary, the
                 MLP; fitted to the measured slope on a CPU) + the output head's logits (2 * S * L * vocab * 4,
                 at most 512 MiB: kept when they fit); gradient checkpointing keeps S * L * layers * h * a plus
                 one layer; eager attention adds S * heads * L^2 * layers * 2a. S: sequences per step (batch x 2
                 for pairs, x num_generations for online RL), L: data.max_length (online RL: prompt +
                 max_new_tokens), a: bytes per activation (2 under mixed or half precision)
    runtime      on a GPU, 1 GiB (CUDA context and workspaces; an allowance, not yet measured); on a CPU,
                 80 MiB (data, tokenizer, trainer) + 0.35 x the policy's weight bytes (loading and allocator
                 slack), both measured with benchmarks/memory_estimate.py

The estimate is compared with a GPU's total memory (the smallest of the run's devices) or, on a CPU, with
the RAM available now; over it, the run stops with the breakdown and the changes that would fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rlhf_lab.preflight.sizes import ModelSize

GIB = 1024**3
#: Bytes per parameter of a bitsandbytes-quantised linear weight (NF4 with double-quantised block scales; int8
#: with per-row scales).
QUANT_BYTES = {4: 0.53, 8: 1.03}
#: Elements saved for backward per token and decoder layer: ``H * hidden + I * intermediate + KV * kv_dim``.
ACT_HIDDEN, ACT_INTERMEDIATE, ACT_KV = 17, 4, 2
#: What the runtime holds besides the run's tensors (bytes): a CUDA context and workspaces, or on a CPU the data,
#: tokenizer and trainer, plus `CPU_SLACK` x the policy's weight bytes (measured: benchmarks/memory_estimate.py).
RUNTIME_BYTES = {"cuda": 1024**3, "cpu": 80 * 1024**2}
CPU_SLACK = 0.35


@dataclass
class Plan:
    """What decides a run's memory (from its config; `rlhf_lab.preflight.plan_of`)."""

    policy: ModelSize
    weight_bytes: float
    act_bytes: float
    adapter: str = "full"
    lora_rank: int = 8
    lora_targets: object = "default"
    dora: bool = False
    quant_bits: int = 0
    optimizer: str = "adamw"
    master_weights: bool = False
    shard_stage: int = 0
    offload: bool = False
    devices: int = 1
    reference: str = "none"
    frozen_models: dict[str, float] = field(default_factory=dict)
    value_model: ModelSize | None = None
    sequences: int = 1
    length: int = 1
    gradient_checkpointing: bool = False
    eager_attention: bool = False
    device: str = "cpu"

    def with_(self, **changes: object) -> Plan:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class Estimate:
    """Bytes per device by part, and the bytes an offloading strategy keeps in CPU RAM instead."""

    parts: dict[str, float]
    offloaded: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def breakdown(self) -> str:
        shown = [f"{name} {gib(value)}" for name, value in self.parts.items() if value >= 0.005 * GIB]
        return " + ".join(shown) + f" = {gib(self.total)}"


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def base_weights(plan: Plan) -> float:
    """The policy's weights (quantised linear layers packed)."""
    size = plan.policy
    if not plan.quant_bits:
        return size.params * plan.weight_bytes
    packed = size.linear_params
    return packed * QUANT_BYTES[plan.quant_bits] + (size.params - packed) * plan.weight_bytes


def trainable(plan: Plan) -> int:
    if plan.adapter == "lora":
        return plan.policy.lora_params(plan.lora_rank, plan.lora_targets, plan.dora)
    return plan.policy.params - plan.policy.frozen_params


def optimizer_bytes(plan: Plan, weight_bytes: float) -> float:
    """Optimiser state per trainable parameter."""
    if plan.optimizer.endswith("8bit"):
        return 2.0
    if plan.master_weights:
        return 12.0  # ZeRO's fp32 master partition and fp32 moments, whatever the weights' dtype
    return 2.0 * weight_bytes


def training_state(params: int, weight_bytes: float, plan: Plan) -> tuple[float, float]:
    """(gradients, optimiser) bytes for ``params`` trainable parameters (LoRA factors are fp32)."""
    return params * weight_bytes, params * optimizer_bytes(plan, weight_bytes)


def activations(plan: Plan, size: ModelSize) -> float:
    tokens = plan.sequences * plan.length
    per_layer = ACT_HIDDEN * size.hidden + ACT_INTERMEDIATE * size.intermediate + ACT_KV * size.kv_dim
    if plan.gradient_checkpointing:
        saved = tokens * (size.layers * size.hidden + per_layer)
    else:
        saved = tokens * size.layers * per_layer
    if plan.eager_attention:
        saved += (
            plan.sequences
            * size.heads
            * plan.length**2
            * (1 if plan.gradient_checkpointing else size.layers)
            * 2
        )
    # The output head: logits of the completion tokens, kept for backward when they fit 512 MiB (auto).
    head = min(2 * tokens * size.vocab * 4, 512 * 1024**2)
    return saved * plan.act_bytes + head


def estimate(plan: Plan) -> Estimate:
    """Bytes per device of ``plan``, by part (the formula in this module's docstring)."""
    lora = plan.adapter == "lora"
    grads, optim = training_state(trainable(plan), 4.0 if lora else plan.weight_bytes, plan)
    weights = base_weights(plan)
    if lora:
        weights += trainable(plan) * 4.0
    n = max(plan.devices, 1)
    sharded_weights = plan.shard_stage >= 3
    parts = {
        "weights": weights / n if sharded_weights else weights,
        "gradients": grads / n if plan.shard_stage >= 2 else grads,
        "optimiser": optim / n if plan.shard_stage >= 1 else optim,
    }
    if plan.reference == "copy":
        parts["reference"] = base_weights(plan) / (n if sharded_weights else 1)
    for name, frozen_bytes in plan.frozen_models.items():
        parts[name] = frozen_bytes / (n if sharded_weights else 1)
    if plan.value_model is not None:
        value = plan.value_model
        v_grads, v_optim = training_state(value.params, plan.weight_bytes, plan)
        parts["value model"] = (value.params * plan.weight_bytes + v_grads + v_optim) / (
            n if sharded_weights else 1
        )
        parts["value activations"] = activations(plan, value)
    parts["activations"] = activations(plan, plan.policy)
    if plan.device == "cuda":
        parts["runtime"] = float(RUNTIME_BYTES["cuda"])
    else:
        parts["runtime"] = RUNTIME_BYTES["cpu"] + CPU_SLACK * base_weights(plan)
    offloaded = 0.0
    if plan.offload and plan.device == "cuda":
        offloaded = parts.pop("optimiser") + (parts.pop("weights") if sharded_weights else 0.0)
    return Estimate(parts, offloaded)


def quantisable(plan: Plan) -> tuple[str, Plan]:
    """A quantised plan under a strategy that can hold bitsandbytes weights (ZeRO-3 and FSDP cannot: zero2 on
    several devices, else none), with the overrides that switch to it."""
    if plan.shard_stage < 3:
        return "", plan
    if plan.devices > 1:
        return " strategy=zero2", plan.with_(shard_stage=2, master_weights=True)
    return " strategy=auto", plan.with_(shard_stage=0, master_weights=False)


def alternatives(plan: Plan) -> list[tuple[str, Plan]]:
    """Changes to a run that lower its memory, each as its command-line overrides and its plan."""
    options: list[tuple[str, Plan]] = []
    if plan.adapter == "full":
        # Under LoRA the reference (algo.reference=auto) is the base with its adapters off: no copy.
        lora = plan.with_(
            adapter="lora", reference="adapter_off" if plan.reference == "copy" else plan.reference
        )
        options.append(("adapter=lora", lora))
        if not plan.quant_bits:
            label, quantised = quantisable(lora.with_(quant_bits=4))
            options.append((f"adapter=lora quant=nf4{label}", quantised))
    if plan.reference == "copy":
        options.append(("algo.reference=precomputed", plan.with_(reference="precomputed")))
    if plan.device == "cuda" and plan.adapter == "full" and not plan.optimizer.endswith("8bit"):
        options.append(("optim=adamw_8bit", plan.with_(optimizer="adamw_8bit")))
    if not plan.gradient_checkpointing:
        options.append(("model.gradient_checkpointing=true", plan.with_(gradient_checkpointing=True)))
    if plan.sequences > 1:
        options.append(("a smaller data.batch_size", plan.with_(sequences=max(1, plan.sequences // 4))))
    if plan.device == "cuda" and plan.shard_stage < 3:
        for devices in (2, 4, 8):
            if devices > plan.devices:
                options.append(
                    (
                        f"strategy=zero3 trainer.devices={devices}",
                        plan.with_(shard_stage=3, master_weights=True, devices=devices),
                    )
                )
    return options


def fitting_options(plan: Plan, budget: float) -> list[str]:
    """The `alternatives` that fit ``budget``, each with its estimate (else the combination of the main ones);
    without a GPU, also the GPU memory the run as configured needs."""
    fits = [
        f"{name} ({gib(estimate(p).total)})" for name, p in alternatives(plan) if estimate(p).total <= budget
    ]
    if not fits:
        combined = plan.with_(adapter="lora", quant_bits=plan.quant_bits or 4, gradient_checkpointing=True)
        label, combined = quantisable(
            combined.with_(reference="adapter_off" if plan.reference == "copy" else plan.reference)
        )
        total = estimate(combined).total
        verdict = "fits" if total <= budget else "still does not fit"
        fits.append(
            f"adapter=lora quant=nf4 model.gradient_checkpointing=true{label} together ({gib(total)}, {verdict})"
        )
    if plan.device != "cuda":
        fits.append(f"as configured, a GPU with at least {gib(estimate(plan.with_(device='cuda')).total)}")
    return fits
