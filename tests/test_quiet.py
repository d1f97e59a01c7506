"""Quiet by default: the known third-party notices are filtered at their source (or their cause fixed), and
``RLHF_LAB_VERBOSE=1`` shows them again."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_lab.cli import QUIET_LOGS, QUIET_WARNINGS, VERBOSE_ENV, QuietLogFilter, quiet_libraries
from rlhf_lab.data.batches import Sequences
from rlhf_lab.generation import SamplingConfig, generate
from tests.subprocesses import python_module

#: What a run printed before (issue 24): none of it may reach the console now.
NOISE = (
    "`weights_only` was not set",
    "Setting accelerator to CPU",
    "litlogger",
    "isinstance(treespec, LeafSpec)",
    "past_key_values",
    "Failed to load CPU gemm_4bit_forward",
    "is_gradient_checkpointing",
)

#: Messages as the libraries log or warn them (the module a warning is attributed to decides its filter).
LOGGED = {
    "lightning.pytorch.trainer.connectors.checkpoint_connector": "`weights_only` was not set, defaulting to `False`.",
    "lightning.pytorch.utilities.rank_zero": "💡 Tip: For seamless cloud logging and experiment tracking, try "
    "installing [litlogger](https://pypi.org/project/litlogger/) to enable LitLogger",
    "DeepSpeed": "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: ...",
}
WARNED = (
    (
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
        "treespec.is_leaf()` instead.",
        "lightning.pytorch.utilities._pytree",
    ),
    (
        "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
        "instead.",
        "transformers.modeling_utils",
    ),
)


@pytest.fixture
def restored() -> Iterator[None]:
    """Warning filters and the loggers' filters as they were before the test."""
    with warnings.catch_warnings():
        yield
    for name, _ in QUIET_LOGS:
        logger = logging.getLogger(name)
        for quiet in [f for f in logger.filters if isinstance(f, QuietLogFilter)]:
            logger.removeFilter(quiet)


def _shown(name: str, message: str) -> bool:
    return bool(
        logging.getLogger(name).filter(
            logging.LogRecord(name, logging.WARNING, "x.py", 1, message, None, None)
        )
    )


def _warned(message: str, module: str) -> bool:
    """Whether the filters `quiet_libraries` installed let the warning through (pytest's own are set aside:
    pyproject.toml ignores every FutureWarning in tests)."""
    ours = {pattern for pattern, _, _ in QUIET_WARNINGS}
    with warnings.catch_warnings(record=True) as caught:
        filters = cast("list[Any]", warnings.filters)
        filters[:] = [f for f in filters if getattr(f[1], "pattern", None) in ours]
        warnings.simplefilter("always", append=True)
        warnings.warn_explicit(message, FutureWarning, "lib.py", 1, module=module, registry={})
    return bool(caught)


def test_known_notices_are_filtered_narrowly_by_default(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert set(LOGGED) == {name for name, _ in QUIET_LOGS}
    quiet_libraries()
    quiet_libraries()  # every entry point calls it; the filters go on once
    for name, message in LOGGED.items():
        assert not _shown(name, message), name
        assert _shown(name, "something that matters"), name  # the logger's other records still show
        assert sum(isinstance(f, QuietLogFilter) for f in logging.getLogger(name).filters) == 1
    assert len(WARNED) == len(QUIET_WARNINGS)
    for message, module in WARNED:
        assert not _warned(message, module), message
        assert _warned(message, "rlhf_lab.policy"), message  # the same words from our code still warn


def test_verbose_installs_no_filter(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VERBOSE_ENV, "1")
    quiet_libraries()
    for name, message in LOGGED.items():
        assert _shown(name, message), name
        assert not any(isinstance(f, QuietLogFilter) for f in logging.getLogger(name).filters)
    patterns = {str(getattr(entry[1], "pattern", entry[1])) for entry in warnings.filters}
    assert not {message for message, _, _ in QUIET_WARNINGS} & patterns
    for message, module in WARNED:
        assert _warned(message, module), message


def test_generation_passes_the_cache_under_its_current_name() -> None:
    """transformers 5 renamed ``past_key_values`` to ``cache``: the sampling loop warns on no call."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    ids = torch.tensor([[3, 4, 5], [0, 6, 7]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    prompts = Sequences(
        input_ids=ids, attention_mask=mask, completion_mask=torch.zeros_like(mask, dtype=torch.bool)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generation = generate(
            model, prompts, SamplingConfig(max_new_tokens=4, do_sample=False), eos_token_id=1, pad_token_id=0
        )
    assert generation.completion_ids.shape[0] == 2
    assert generation.completions()[0] == generation.completion_ids[0][generation.completion_mask[0]].tolist()


@pytest.mark.slow
def test_a_default_run_prints_none_of_the_known_notices(tmp_path: Path) -> None:
    result = python_module(
        "rlhf_lab",
        "data.source.num_train=64",
        "data.source.num_eval=32",
        "data.batch_size=8",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "export").is_dir()
    console = result.stdout + result.stderr
    assert [noise for noise in NOISE if noise in console] == []
