"""Typed config schemas, derived from the classes the YAML files instantiate.

Every ``conf/<group>/<option>.yaml`` names a ``_target_`` and starts from the schema of that target
(``defaults: [/schema/<group>/<name>@_here_]``). The schema is generated from the target's constructor
or dataclass fields, so types and defaults are written once, in Python: a typo'd key or a value of the
wrong type fails at composition with the key in the message, and required fields are ``???``.
Choices and ranges are checked by the constructors (`rlhf_lab.errors.check_choice`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import keyword
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf, open_dict

_SIMPLE = (int, float, bool, str)


def _schema_type(annotation: Any) -> Any:
    if annotation in _SIMPLE:
        return annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _SIMPLE:
            return Optional[rest[0]]  # noqa: UP045 - OmegaConf needs typing.Optional
        return Any
    if origin is list and args and args[0] in _SIMPLE:
        return list[args[0]]  # type: ignore[valid-type]
    return Any


def _default_of(value: Any) -> Any:
    if value is inspect.Parameter.empty or value is dataclasses.MISSING:
        return MISSING
    if isinstance(value, (list, dict, tuple)):
        return dataclasses.field(
            default_factory=lambda v=value: list(v) if isinstance(v, tuple) else v.copy()
        )
    return value


def schema_for(target: type, exclude: tuple[str, ...] = ()) -> Any:
    """A dataclass with ``_target_`` plus one typed field per constructor argument of ``target``.

    Args:
        target: The class the config instantiates.
        exclude: Constructor arguments that are passed at instantiation time, not configured.
    """
    fields: list[tuple[str, Any, Any]] = [("_target_", str, f"{target.__module__}.{target.__qualname__}")]
    hints: dict[str, Any] = {}
    params: list[tuple[str, Any]] = []
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        params = [
            (f.name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(target)
            if f.init
        ]
    else:
        # Follow **kwargs up the class hierarchy: a subclass's constructor forwards to its base.
        for cls in target.__mro__:
            if "__init__" not in vars(cls):
                continue
            hints = {**typing.get_type_hints(cls.__init__), **hints}
            signature = inspect.signature(cls.__init__).parameters.values()
            params += [
                (p.name, p.default)
                for p in signature
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            ]
            if not any(p.kind is p.VAR_KEYWORD for p in signature):
                break
    keyword_fields = []
    for name, default in params:
        if name in exclude:
            continue
        if default == "???":
            default = MISSING
        fields.append((name, _schema_type(hints.get(name, Any)), _default_of(default)))
        if name.endswith("_") and keyword.iskeyword(name[:-1]):
            keyword_fields.append(name)
    ordered = [f for f in fields if f[2] is MISSING] + [f for f in fields if f[2] is not MISSING]
    specs = [
        (n, t, d if isinstance(d, dataclasses.Field) else dataclasses.field(default=d)) for n, t, d in ordered
    ]
    schema = dataclasses.make_dataclass(f"{target.__name__}Schema", specs)
    if not keyword_fields:
        return schema
    # A paper name that is a Python keyword (ORPO's `lambda`) is `lambda_` in Python: rename the typed node.
    node = OmegaConf.structured(schema)
    with open_dict(node):
        for name in keyword_fields:
            typed = copy.deepcopy(node._get_node(name))
            del node[name]
            node[name[:-1]] = typed
    return node


OBJECTIVE_RUNTIME_ARGS = ("model", "adapter", "optim", "runtime", "quant")


def register_schemas() -> None:
    """Store every schema under ``schema/<group>/<name>`` in Hydra's ConfigStore."""
    from rlhf_lab.data.datamodule import PreferenceDataModule
    from rlhf_lab.data.sources import HubDataset, LocalFiles
    from rlhf_lab.data.synthetic import SyntheticPreferences
    from rlhf_lab.models.adapters import FullFinetune, LoraAdapter
    from rlhf_lab.models.hub import HubModel
    from rlhf_lab.models.tiny import TinyModel
    from rlhf_lab.objectives import CPO, DPO, KTO, ORPO, SFT, OptimConfig, RewardModel, SimPO

    store = ConfigStore.instance()
    objectives = {
        "dpo": DPO,
        "sft": SFT,
        "cpo": CPO,
        "simpo": SimPO,
        "orpo": ORPO,
        "kto": KTO,
        "reward": RewardModel,
    }
    entries: dict[str, dict[str, Any]] = {
        "algo": {name: schema_for(cls, OBJECTIVE_RUNTIME_ARGS) for name, cls in objectives.items()},
        "model": {"hub": schema_for(HubModel), "tiny": schema_for(TinyModel)},
        "adapter": {"full": schema_for(FullFinetune), "lora": schema_for(LoraAdapter)},
        "data": {"datamodule": schema_for(PreferenceDataModule)},
        "source": {
            "synthetic": schema_for(SyntheticPreferences),
            "files": schema_for(LocalFiles),
            "hub": schema_for(HubDataset),
        },
        "optim": {"adamw": schema_for(OptimConfig)},
    }
    for group, schemas in entries.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)
