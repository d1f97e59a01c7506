"""The model card (``export/README.md``) of an export: what was trained, on what, how well, and how to load it.

The front matter is a Hugging Face model card's (``library_name``, ``base_model``, ``tags``), so the hub
shows it when the export is uploaded (``export.push_to_hub``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: ``owner/name`` (or a bare canonical name): what the hub would resolve, as opposed to a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: Data source fields worth naming in the card, when set.
_SOURCE_FIELDS = (
    "name",
    "subset",
    "train_path",
    "eval_path",
    "dataset_info",
    "num_train",
    "num_eval",
    "rows",
)
_COUNTS = ("rows", "examples", "truncated", "dropped_too_long", "identical_dropped")


def _plain(node: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or a plain value, as plain Python."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _short(target: Any) -> str:
    return str(target or "").rsplit(".", 1)[-1]


def _choices() -> dict[str, str]:
    """The config groups' chosen options (``algo: dpo``) when running under Hydra, else nothing."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except Exception:  # Hydra absent or its config incomplete: the names are derived from the config instead
        pass
    return {}


def objective_name(algo: Mapping[str, Any]) -> str:
    """The objective's short name (``dpo``, ``ipo``, ``grpo``, ``sft``...) from its config."""
    choice = _choices().get("algo")
    if choice:
        return choice
    if algo.get("advantage_estimator"):
        return str(algo["advantage_estimator"])
    if algo.get("loss"):
        name = _short(algo["loss"]).removesuffix("_loss")
        loss_type = algo.get("loss_type")
        return (
            str(loss_type)
            if name == "dpo" and isinstance(loss_type, str) and loss_type != "sigmoid"
            else name
        )
    return _short(algo.get("_target_")).lower() or "unknown"


def hub_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` when it names a hub repository rather than a local directory."""
    if not name_or_path or Path(name_or_path).expanduser().exists() or not _HUB_ID.match(name_or_path):
        return None
    return name_or_path


def base_model(model: Mapping[str, Any]) -> str:
    """The base model in words: its hub id or path, or what a tiny model is built from."""
    target = _short(model.get("_target_"))
    if target.startswith("Tiny"):
        sizes = f"hidden size {model.get('hidden_size')}, {model.get('num_layers')} layers"
        return (
            f"a tiny {model.get('architecture')} built by rlhf_lab ({target}: {sizes}, random weights from "
            f"seed {model.get('seed')}, tokenizer trained on the run's texts)"
        )
    revision = f" (revision {model['revision']})" if model.get("revision") else ""
    return f"`{model.get('name_or_path')}`{revision}"


def _adapter(adapter: Mapping[str, Any]) -> str:
    target = _short(adapter.get("_target_"))
    if target == "FullFinetune" or not target:
        return "none (full fine-tuning)"
    kind = "DoRA" if adapter.get("use_dora") else "LoRA"
    return (
        f"{kind} r={adapter.get('r')}, alpha={adapter.get('alpha')}, targets {adapter.get('target_modules')}"
    )


def _quant(quant: Mapping[str, Any]) -> str:
    target = _short(quant.get("_target_"))
    if target in ("NoQuantization", ""):
        return "none"
    return _choices().get("quant") or target


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def held_out(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(metric, "start -> end")`` for every held-out metric (``end`` alone without a step-0 validation)."""
    rows = []
    for key in sorted(k for k in summary if k.startswith("val/")):
        end = _value(summary[key])
        start_key = "val_start/" + key.removeprefix("val/")
        rows.append((key, f"{_value(summary[start_key])} -> {end}" if start_key in summary else end))
    return rows


def front_matter(cfg: Mapping[str, Any], adapter_export: bool, vision: bool) -> str:
    """The card's YAML header, as the hub reads it."""
    meta: dict[str, Any] = {"library_name": "peft" if adapter_export else "transformers"}
    base = hub_id(cfg["model"].get("name_or_path"))
    if base:
        meta["base_model"] = base
    tags = ["rlhf_lab", objective_name(cfg["algo"])]
    if _short(cfg["adapter"].get("_target_")) != "FullFinetune":
        tags.append("dora" if cfg["adapter"].get("use_dora") else "lora")
    meta["tags"] = tags
    meta["pipeline_tag"] = "image-text-to-text" if vision else "text-generation"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _setup(cfg: Mapping[str, Any], summary: Mapping[str, Any], adapter_export: bool) -> list[str]:
    algo = cfg["algo"]
    objective = f"{objective_name(algo)} (`{algo.get('_target_')}`"
    objective += f", loss `{algo['loss']}`)" if algo.get("loss") else ")"
    trainer, optim, data = cfg.get("trainer") or {}, cfg.get("optim") or {}, cfg.get("data") or {}
    rows = [
        ("Base model", base_model(cfg["model"])),
        ("Objective", objective),
        ("Adapter", _adapter(cfg["adapter"])),
        ("Quantisation", _quant(cfg.get("quant") or {})),
        ("Strategy", _choices().get("strategy") or _short((cfg.get("strategy") or {}).get("_target_"))),
        ("Export", "the adapter alone (peft)" if adapter_export else "full weights (safetensors)"),
        ("Optimiser steps", _count(summary.get("trainer/global_step"))),
        ("Optimiser", f"{optim.get('name', _short(optim.get('_target_')))}, lr {optim.get('lr')}"),
        ("Batch size", f"{data.get('batch_size')} x {trainer.get('accumulate_grad_batches', 1)} accumulated"),
        ("Max length", f"{data.get('max_length')} tokens (prompt {data.get('max_prompt_length')})"),
        ("Seed", cfg.get("seed")),
    ]
    return _table(("", ""), rows)


def _hyperparameters(algo: Mapping[str, Any]) -> list[str]:
    rows = [
        (f"`algo.{key}`", f"`{json.dumps(value)}`")
        for key, value in algo.items()
        if key not in ("_target_", "loss")
    ]
    return _table(("key", "value"), rows) if rows else ["(none)"]


def _data(cfg: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    source = (cfg.get("data") or {}).get("source") or {}
    fields = ", ".join(
        f"{key}={source[key]}" for key in _SOURCE_FIELDS if source.get(key) not in (None, "", [])
    )
    lines = [
        f"Source: `{source.get('_target_')}`" + (f" ({fields})" if fields else ""),
        "",
        f"Layout detected: {summary.get('data/format', 'unknown')}",
        "",
    ]
    splits = [s for s in ("train", "val") if f"data/{s}/examples" in summary]
    rows = [(split, *(_count(summary.get(f"data/{split}/{name}")) for name in _COUNTS)) for split in splits]
    return lines + _table(("split", *(name.replace("_", " ") for name in _COUNTS)), rows)


def _count(value: Any) -> str:
    return str(int(value)) if isinstance(value, int | float) and math.isfinite(value) else "-"


def how_to_load(location: str, local: str, adapter_export: bool, vision: bool) -> list[str]:
    """Loading snippets: transformers (or peft for an adapter), and the chat command."""
    model_class = "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"
    text_class = "AutoProcessor" if vision else "AutoTokenizer"
    if adapter_export:
        code = [
            "from peft import PeftConfig, PeftModel",
            f"from transformers import {model_class}, {text_class}",
            "",
            f'config = PeftConfig.from_pretrained("{location}")',
            f"base = {model_class}.from_pretrained(config.base_model_name_or_path)",
            f'model = PeftModel.from_pretrained(base, "{location}")  # model.merge_and_unload() to merge',
        ]
    else:
        code = [f"from transformers import {model_class}, {text_class}", ""]
        code.append(f'model = {model_class}.from_pretrained("{location}")')
    name = "processor" if vision else "tokenizer"
    code.append(f'{name} = {text_class}.from_pretrained("{location}")')
    if not vision:
        code += [
            'messages = [{"role": "user", "content": "Hello"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, "
            'return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=64)",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        ]
    lines = ["```python", *code, "```", ""]
    if vision:
        lines += [
            "Qwen2-VL-family processors need torchvision for `AutoProcessor` (their video processor; "
            "`pip install torchvision`); without it, `rlhf_lab.models.vision.load_processor(path)` loads the "
            "same processor for images and text.",
            "",
        ]
    image = " --image picture.png" if vision else ""
    lines += [
        "Chat with it (interactive; `--prompt` for one reply):",
        "",
        "```bash",
        f'python -m rlhf_lab.chat {local} --prompt "Hello"{image}',
        "```",
    ]
    return lines


def _not_learned(summary: Mapping[str, Any]) -> list[str]:
    """A warning paragraph when the run did not learn (``run/learned: false``); nothing otherwise."""
    if summary.get("run/learned") is not False:
        return []
    return [
        "> **Warning: this run did not learn.** Its held-out objective did not improve from step 0 (see the "
        "held-out metrics below; `run/learned: false` in `summary.json`): this model is no better than the "
        "one it started from, and may have collapsed (a learning rate far too high does that without a NaN).",
        "",
    ]


def model_card(
    cfg: Mapping[str, Any],
    summary: Mapping[str, Any],
    export_dir: Path,
    local: str,
    repo_id: str | None = None,
) -> str:
    """The text of ``export/README.md``.

    Args:
        cfg: The run's composed config.
        summary: The run's ``summary.json`` values.
        export_dir: The saved export (read for what it holds: an adapter, a vision-language model).
        local: Where the export will be on disk (the chat command's argument).
        repo_id: The hub repository it is uploaded to (the loading snippets' argument), if any.
    """
    cfg = _plain(cfg)
    adapter_export = (export_dir / "adapter_config.json").is_file()
    vision = (export_dir / "preprocessor_config.json").is_file()
    lines = [
        front_matter(cfg, adapter_export, vision),
        f"# {objective_name(cfg['algo'])} model trained with rlhf_lab",
        "",
        *_not_learned(summary),
        *_setup(cfg, summary, adapter_export),
        "",
        "## Objective hyperparameters",
        "",
        *_hyperparameters(cfg["algo"]),
        "",
        "## Data",
        "",
        *_data(cfg, summary),
        "",
        "## Held-out metrics",
        "",
        *(_table(("metric", "value"), held_out(summary)) if held_out(summary) else ["(no validation)"]),
        "",
        "## How to load",
        "",
        *how_to_load(repo_id or local, local, adapter_export, vision),
    ]
    return "\n".join(lines) + "\n"
