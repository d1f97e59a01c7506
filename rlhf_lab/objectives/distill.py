"""Distillation from a teacher: supervised KD, SeqKD and on-policy GKD, over one shared `Distillation` base.

The teacher is a model spec of its own (``teacher=<option>``: the ``model`` group's options), built frozen
beside the student by `rlhf_lab.models.build.build_models` and required to share its vocabulary, or
``teacher=adapter_off``: the student's own base with its adapters disabled (self-distillation). Per-token
divergences come from `rlhf_lab.logprobs.completion_distillation`, chunked so that student and teacher
``[batch, seq, vocab]`` logits never exist. Every objective reports the same held-out metrics on the
dataset's completions, so they are comparable: ``teacher_student_kl/forward`` (``KL(p_T || p_S)`` per
token), ``teacher_student_kl/reverse``, ``kd_loss`` (the divergence at ``temperature``) and ``nll_loss``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
from array import array
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch

from rlhf_lab.data.batches import Sequences, SingleBatch
from rlhf_lab.data.collate import pad_rows
from rlhf_lab.errors import ConfigError, check_range
from rlhf_lab.generation import Generation, SamplingConfig, generate, stop_and_pad_ids
from rlhf_lab.lightning_compat import attached_trainer
from rlhf_lab.logprobs import completion_distillation, decoder_and_head
from rlhf_lab.losses.distill import DistillationTokens, generalized_jsd
from rlhf_lab.losses.hyperparameters import UNIT_INTERVAL, check_hyperparameters
from rlhf_lab.losses.sft import nll_loss
from rlhf_lab.models.build import Companion
from rlhf_lab.objectives.base import AlignmentObjective
from rlhf_lab.policy import adapters_disabled, hidden_states
from rlhf_lab.progress import progress
from rlhf_lab.reference import cache_key, file_lock, require_adapters

log = logging.getLogger(__name__)

#: ``teacher=adapter_off``: the student's base with its adapters disabled.
ADAPTER_OFF = "adapter_off"


def prompts_of(sequences: Sequences, pad_token_id: int) -> Sequences:
    """The prompt part of right-padded rows, left-padded (what generation continues from)."""
    mask = sequences.prompt_mask
    rows: list[tuple[list[int], list[int]]] = [
        (row[keep].tolist(), []) for row, keep in zip(sequences.input_ids.cpu(), mask.cpu(), strict=True)
    ]
    return pad_rows(rows, pad_token_id, left=True).to(sequences.input_ids.device)


def every_rank(value: bool, device: torch.device) -> bool:
    """``value`` if it holds on every process of a distributed run (``value`` itself outside one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    flag = torch.tensor([int(value)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


class Distillation(AlignmentObjective):
    """Shared base: the teacher, the chunked per-token divergence, and the held-out metrics.

    Args:
        teacher: The teacher's model spec (``teacher=<option>``), or ``"adapter_off"``.
        beta: Generalised JSD interpolation: 0 forward KL ``KL(p_T || p_S)``, 1 reverse KL.
        temperature: Softmax temperature of both distributions in the divergence.
        teacher_topk: Compare the distributions on the teacher's top-k tokens only (0: the whole vocabulary).
        **kwargs: `AlignmentObjective` arguments.
    """

    RUNTIME_ARGS = (*AlignmentObjective.RUNTIME_ARGS, "teacher")

    @property
    def needs_reference(self) -> bool:
        return False

    batch_kind = "single"

    def __init__(
        self,
        teacher: Any = None,
        beta: float = 0.0,
        temperature: float = 1.0,
        teacher_topk: int = 0,
        **kwargs: Any,
    ) -> None:
        check_hyperparameters(generalized_jsd, {"beta": beta, "temperature": temperature})
        check_range("algo.teacher_topk", teacher_topk, 0)
        super().__init__(**kwargs)
        if teacher is None:
            raise ConfigError(
                f"{self.name} distils from a teacher: set teacher=hub teacher.name_or_path=<directory or hub id> "
                "(or teacher=tiny, or teacher=adapter_off for the student's base with its adapters off)"
            )
        if teacher == ADAPTER_OFF:
            require_adapters("teacher", self.adapter, "or distil from a model: teacher=tiny, hub, ...")
        self.teacher_spec = teacher
        self.beta, self.temperature, self.teacher_topk = beta, temperature, teacher_topk

    #: Whether the training loss uses the NLL of the target tokens (KD with alpha < 1); otherwise it is a metric.
    uses_nll = False
    #: Rows without a completion (prompt-only data) are completed by the teacher before training.
    completes_prompts = True

    @property
    def self_distillation(self) -> bool:
        return self.teacher_spec == ADAPTER_OFF

    def companion_specs(self) -> dict[str, Companion]:
        specs = super().companion_specs()
        if not self.self_distillation:
            # Logits are compared token for token: the teacher must tokenise exactly like the student.
            specs["teacher"] = Companion(
                self.teacher_spec, same_vocabulary=True, key="teacher.name_or_path", role="teacher"
            )
        return specs

    def teacher_model(self) -> tuple[torch.nn.Module, Callable[[], Any]]:
        """The teacher's causal LM and the context it runs in (adapters off for self-distillation)."""
        if self.self_distillation:
            model = self.policy.model
            return model, functools.partial(adapters_disabled, model)
        teacher = cast(torch.nn.Module, self.companions["teacher"].model)
        return teacher, nullcontext

    def distill(
        self, sequences: Sequences, beta: float | None = None, temperature: float | None = None
    ) -> DistillationTokens:
        """Per-token divergence, NLL and KLs of ``sequences``' completion tokens (student with gradients)."""
        decoder, head = decoder_and_head(self.policy.model)
        student = hidden_states(decoder, sequences)
        teacher, context = self.teacher_model()
        teacher_decoder, teacher_head = decoder_and_head(teacher)
        with torch.no_grad(), context():
            teacher_hidden = hidden_states(teacher_decoder, sequences)[:, :-1]

        def teacher_logits_at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            with context():
                return teacher_head(teacher_hidden[rows, cols])

        return completion_distillation(
            student,
            teacher_logits_at,
            sequences.input_ids,
            sequences.completion_mask,
            head,
            chunk_size=self.runtime.logps_chunk_size,
            beta=self.beta if beta is None else beta,
            temperature=self.temperature if temperature is None else temperature,
            teacher_topk=self.teacher_topk,
            nll_grad=self.uses_nll,
        )

    @staticmethod
    def token_metrics(tokens: DistillationTokens) -> dict[str, torch.Tensor]:
        """Means over the batch's completion tokens."""
        return {
            "kd_loss": tokens.divergence.detach().mean(),
            "nll_loss": tokens.nll.detach().mean(),
            "teacher_student_kl/forward": tokens.forward_kl.mean(),
            "teacher_student_kl/reverse": tokens.reverse_kl.mean(),
        }

    def held_out(self, batch: SingleBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Held-out loss and metrics on the dataset's completions (the same for every distillation objective)."""
        tokens = self.distill(batch.sequences)
        return self.loss_of(tokens), self.token_metrics(tokens)

    def loss_of(self, tokens: DistillationTokens) -> torch.Tensor:
        return tokens.divergence.mean()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.use_teacher_completions(self.trainer.datamodule)  # type: ignore[attr-defined]  # set by fit

    def on_validation_start(self) -> None:
        super().on_validation_start()
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if datamodule is not None:
            self.use_teacher_completions(datamodule)  # evaluation alone: held-out prompts too

    def rows_to_complete(self, split: str, examples: list[Any]) -> list[int]:
        """The examples the teacher completes: those without a completion (prompt-only rows)."""
        return [index for index, example in enumerate(examples) if not example.chosen_ids]

    def teacher_completions_key(self, prompts: list[list[int]], datamodule: Any, seed_tag: str) -> str:
        digest = hashlib.sha256()
        for prompt in prompts:
            digest.update(array("q", prompt).tobytes() + b"|")
        return cache_key(
            teacher=self.model_spec.identity() if self.self_distillation else self.teacher_spec.identity(),
            self_distillation=self.self_distillation,
            prompts=digest.hexdigest(),
            sampling=dataclasses.asdict(self.teacher_sampling),
            seed=self.runtime.seed,
            seeds=seed_tag,
            max_length=datamodule.settings.max_length,
        )

    @property
    def teacher_sampling(self) -> SamplingConfig:
        """How the teacher completes prompts: the objective's generation settings, or greedy up to 64 tokens."""
        return getattr(self, "sampling", SamplingConfig(max_new_tokens=64, do_sample=False))

    @torch.no_grad()
    def use_teacher_completions(self, datamodule: Any) -> dict[str, str]:
        """Give the examples `rows_to_complete` names the teacher's completions (from the cache, or generated
        now), once per dataset; returns ``{split: "cache" | "generated"}`` for the splits it completed."""
        done: set[int] = getattr(self, "_completed_datasets", set())
        sources: dict[str, str] = {}
        for split, dataset in datamodule.datasets.items():
            rows = [] if id(dataset) in done else self.rows_to_complete(split, dataset.examples)
            done.add(id(dataset))
            if not rows:
                continue
            part = [dataset.examples[i] for i in rows]
            seed_tag = "seqkd" if split == "train" else f"seqkd-{split}"
            key = self.teacher_completions_key([example.prompt_ids for example in part], datamodule, seed_tag)
            cache_file = Path(self.runtime.cache_dir) / "seqkd" / f"{key}.pt"
            # Under data parallelism generation is collective: a file lock held by one rank while the others
            # wait for it would deadlock, so the ranks take no lock and agree on the cache instead.
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            with nullcontext() if distributed else file_lock(cache_file):
                if every_rank(cache_file.exists(), self.device):
                    completions, source = torch.load(cache_file, weights_only=True), "cache"
                else:
                    completions, source = self._generate_all(part, datamodule, seed_tag), "generated"
                    trainer = attached_trainer(self)
                    if trainer is None or trainer.is_global_zero:
                        from rlhf_lab.checkpoints import atomic_torch_save

                        atomic_torch_save(completions, cache_file)
            for index, ids in zip(rows, completions, strict=True):
                dataset.examples[index] = dataclasses.replace(dataset.examples[index], chosen_ids=list(ids))
            log.info(
                "%s: %d teacher completions (%s: %s), %s split",
                self.name,
                len(rows),
                source,
                cache_file,
                split,
            )
            sources[split] = source
        self._completed_datasets = done
        return sources

    def _generate_all(self, examples: list[Any], datamodule: Any, seed_tag: str = "seqkd") -> list[list[int]]:
        teacher, context = self.teacher_model()
        completions: list[list[int]] = []
        size = datamodule.eval_batch_size
        limit = datamodule.settings.max_length
        for start in progress(range(0, len(examples), size), "teacher completions"):
            part = examples[start : start + size]
            prompts = pad_rows([(e.prompt_ids, []) for e in part], self.tokenizer.pad_token_id, left=True).to(
                self.device
            )
            seeds = [self.derived_seed(seed_tag, start + i) for i in range(len(part))]
            generation = self.generate_with(teacher, prompts, self.teacher_sampling, seeds, context)
            for example, row, mask in zip(
                part, generation.completion_ids.cpu(), generation.completion_mask.cpu(), strict=True
            ):
                ids = row[mask].tolist()
                room = math.inf if limit is None else limit - len(example.prompt_ids)
                completions.append(ids[: int(min(room, len(ids)))] or [self.tokenizer.eos_token_id])
        return completions

    def generate_with(
        self,
        model: torch.nn.Module,
        prompts: Sequences,
        sampling: SamplingConfig,
        seeds: list[int],
        context: Any = nullcontext,
    ) -> Generation:
        with context():
            return generate(
                model, prompts, sampling, row_seeds=seeds, **stop_and_pad_ids(model, self.tokenizer)
            )


class KD(Distillation):
    """Supervised knowledge distillation on the dataset's completions (Hinton et al., 2015): per token,
    ``(1 - alpha) * CE + alpha * JSD_beta(p_T || p_S)`` at ``temperature`` (``beta=0``: forward KL).

    Args:
        alpha: Weight of the divergence (1 - alpha: of the cross-entropy with the dataset token).
        **kwargs: `Distillation` arguments.
    """

    def __init__(self, alpha: float = 0.5, **kwargs: Any) -> None:
        UNIT_INTERVAL.check("algo.alpha", alpha)
        super().__init__(**kwargs)
        self.alpha = alpha
        self.uses_nll = alpha < 1

    def loss_of(self, tokens: DistillationTokens) -> torch.Tensor:
        return ((1 - self.alpha) * tokens.nll + self.alpha * tokens.divergence).mean()

    def compute(self, batch: SingleBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.held_out(batch)


class SeqKD(Distillation):
    """Sequence-level KD (Kim & Rush, 2016): the teacher completes every training prompt once (greedy by
    default), and the student trains on those completions with the SFT loss.

    The completions are cached under ``paths.cache_dir/seqkd``, keyed by the teacher's identity, the
    tokenised prompts and the generation settings, so a sweep over the student's settings generates once.

    Args:
        max_new_tokens: Longest teacher completion.
        do_sample: Sample (at ``generation_temperature``) instead of greedy decoding.
        generation_temperature: Sampling temperature of the teacher.
        **kwargs: `Distillation` arguments (``beta`` and ``temperature`` only shape the held-out ``kd_loss``).
    """

    def __init__(
        self,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        generation_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=generation_temperature, do_sample=do_sample
        )

    def rows_to_complete(self, split: str, examples: list[Any]) -> list[int]:
        """Every training example (the teacher's completions replace the dataset's); held-out ones without a
        completion."""
        return list(range(len(examples))) if split == "train" else super().rows_to_complete(split, examples)

    def compute(self, batch: SingleBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if split != "train":
            return self.held_out(batch)
        target = self.policy(batch.sequences)
        losses = nll_loss(target.logps, target.lengths)
        return losses.mean(), {"nll_loss": losses.detach().mean()}


class GKD(Distillation):
    """Generalised knowledge distillation (Agarwal et al., 2024): each training batch is, with probability
    ``lmbda``, completed by the student itself (on-policy, at ``generation_temperature``); otherwise it keeps
    the dataset's completions, or with ``seq_kd=true`` the teacher completes it. The loss is the
    generalised JSD of ``beta`` at ``temperature`` over the completion tokens.

    The coin is seeded by the run's seed and the step, so every rank takes the same decision and a resumed
    run draws what an uninterrupted one would.

    Args:
        lmbda: Probability of an on-policy (student-generated) batch.
        seq_kd: Off-policy batches are teacher completions instead of the dataset's.
        max_new_tokens: Longest generated completion.
        generation_temperature: Sampling temperature of generation.
        min_new_tokens: No EOS before this many generated tokens (transformers' ``min_new_tokens``).
        **kwargs: `Distillation` arguments (``beta`` 0.5, ``temperature`` 0.9 as in TRL's GKD).
    """

    def __init__(
        self,
        lmbda: float = 0.5,
        seq_kd: bool = False,
        max_new_tokens: int = 32,
        generation_temperature: float = 0.9,
        min_new_tokens: int = 0,
        beta: float = 0.5,
        temperature: float = 0.9,
        **kwargs: Any,
    ) -> None:
        UNIT_INTERVAL.check("algo.lmbda", lmbda)
        check_range("algo.min_new_tokens", min_new_tokens, 0, max_new_tokens - 1)
        super().__init__(beta=beta, temperature=temperature, **kwargs)
        self.lmbda, self.seq_kd = lmbda, seq_kd
        self.sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=generation_temperature, min_new_tokens=min_new_tokens
        )

    def _coin(self, step: int) -> float:
        return (self.derived_seed("gkd", step) % 2**53) / 2**53

    def compute(self, batch: SingleBatch, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if split != "train":
            return self.held_out(batch)
        trainer = attached_trainer(self)
        step = trainer.global_step if trainer is not None else 0
        on_policy = self._coin(step) < self.lmbda
        sequences = batch.sequences
        metrics: dict[str, torch.Tensor] = {}
        if on_policy or self.seq_kd:
            prompts = prompts_of(sequences, self.tokenizer.pad_token_id)
            seeds = [self.derived_seed("gkd", step, int(i)) for i in batch.index.tolist()]
            if on_policy:
                generation = self.generate_with(self.policy.model, prompts, self.sampling, seeds)
            else:
                teacher, context = self.teacher_model()
                generation = self.generate_with(teacher, prompts, self.sampling, seeds, context)
            sequences = generation.sequences()
            metrics["completions/mean_length"] = generation.lengths.float().mean()
        tokens = self.distill(sequences)
        metrics.update(self.token_metrics(tokens))
        metrics["on_policy_fraction"] = torch.tensor(float(on_policy), device=self.device)
        return self.loss_of(tokens), metrics
