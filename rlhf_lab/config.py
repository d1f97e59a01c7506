"""Typed config schemas, derived from the classes the YAML files instantiate.

Every ``rlhf_lab/conf/<group>/<option>.yaml`` names a ``_target_`` and starts from the schema of that target
(``defaults: [/schema/<group>/<name>@_here_]``). `register_schemas` reads those two lines from the YAML
files themselves (no second list in Python) and generates each schema from the target's constructor or
dataclass fields, so types and defaults are written once, in Python: a typo'd key or a value of the
wrong type fails at composition with the key in the message, and required fields are ``???``.
Choices and ranges are checked by the constructors (`rlhf_lab.errors.check_choice`, and for losses
`rlhf_lab.losses.hyperparameters`).

Generating the schemas imports every target (torch, Lightning, transformers: seconds), so the generated fields
are cached in ``<cache dir>/schemas/`` (`schema_specs`), keyed by the size and mtime of the YAML files and of
every module file they were generated from: ``--help``, ``--cfg`` and a typo'd key need none of those imports.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import keyword
import os
import sys
import time
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf, open_dict

from rlhf_lab.errors import ConfigError

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


def _field_of(default: Any) -> Any:
    """A dataclass field with this default (a mutable one copied for each instance)."""
    if isinstance(default, (list, dict, tuple)):
        return dataclasses.field(default_factory=functools.partial(_fresh_copy, default))
    return dataclasses.field(default=default)


def _fresh_copy(value: list[Any] | dict[str, Any] | tuple[Any, ...]) -> list[Any] | dict[str, Any]:
    # A mutable default, copied for each instance (a tuple becomes the list OmegaConf stores).
    return list(value) if isinstance(value, tuple) else value.copy()


def _dataclass_params(target: Any) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Type hints and ``(name, default)`` of a dataclass's ``__init__`` fields (a default factory called)."""
    hints = typing.get_type_hints(target)
    params = [
        (f.name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(target)
        if f.init
    ]
    return hints, params


def _constructor_params(target: Any) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Type hints and ``(name, default)`` of a class's constructor arguments, following ``**kwargs`` up the
    class hierarchy (a subclass's constructor forwards to its base); a subclass's come first."""
    hints: dict[str, Any] = {}
    params: list[tuple[str, Any]] = []
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
    return hints, params


def _rename_keyword_fields(schema: Any, keyword_fields: list[str]) -> Any:
    """The schema as a typed node, with each ``<keyword>_`` field renamed ``<keyword>``."""
    # A paper name that is a Python keyword (ORPO's `lambda`) is `lambda_` in Python: rename the typed node.
    node = OmegaConf.structured(schema)
    with open_dict(node):
        for name in keyword_fields:
            typed = copy.deepcopy(node._get_node(name))
            del node[name]
            node[name[:-1]] = typed
    return node


def schema_fields(
    target: Any, exclude: tuple[str, ...] = (), extra: Iterable[tuple[str, Any, Any]] = ()
) -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of each configurable argument of ``target``, required ones (default
    ``MISSING``) first: what `build_schema` makes a schema of (and what the schema cache stores).

    Args:
        target: The class (or factory function) the config instantiates.
        exclude: Constructor arguments that are passed at instantiation time, not configured.
        extra: ``(name, annotation, default)`` of arguments the constructor takes through ``**kwargs``
            (a pairwise objective's loss hyperparameters).
    """
    fields: list[tuple[str, Any, Any]] = [("_target_", str, f"{target.__module__}.{target.__qualname__}")]
    hints, params = (
        _dataclass_params(target) if dataclasses.is_dataclass(target) else _constructor_params(target)
    )
    for name, annotation, default in extra:
        hints.setdefault(name, annotation)
        params.append((name, default))
    seen: set[str] = set()
    for name, default in params:
        # A subclass may re-declare a base argument with its own default (PPO's beta): the subclass's wins.
        if name in exclude or name in seen:
            continue
        seen.add(name)
        if default == "???" or default is inspect.Parameter.empty or default is dataclasses.MISSING:
            default = MISSING
        fields.append((name, _schema_type(hints.get(name, Any)), default))
    return [f for f in fields if f[2] is MISSING] + [f for f in fields if f[2] is not MISSING]


def build_schema(title: str, fields: Sequence[tuple[str, Any, Any]]) -> Any:
    """The schema dataclass (a typed node when a field is a Python keyword) of `schema_fields`' fields."""
    specs = [(name, annotation, _field_of(default)) for name, annotation, default in fields]
    schema = dataclasses.make_dataclass(title, specs)
    keyword_fields = [name for name, _, _ in fields if name.endswith("_") and keyword.iskeyword(name[:-1])]
    return _rename_keyword_fields(schema, keyword_fields) if keyword_fields else schema


def schema_for(
    target: Any,
    exclude: tuple[str, ...] = (),
    extra: Iterable[tuple[str, Any, Any]] = (),
    title: str | None = None,
) -> Any:
    """A dataclass with ``_target_`` plus one typed field per constructor argument of ``target``
    (`schema_fields`), named ``title`` (``AlgoDpoSchema``; default ``<target name>Schema``)."""
    return build_schema(title or f"{target.__name__}Schema", schema_fields(target, exclude, extra))


#: The config groups, shipped inside the package (``rlhf_lab/conf``) so an installed wheel has them; the CLI
#: reads them as ``pkg://rlhf_lab.conf``. The one place that says where they are: import it from here.
CONF_DIR = Path(__file__).resolve().parent / "conf"
CONF_SEARCH_PATH = "pkg://rlhf_lab.conf"
SCHEMA_PREFIX = "/schema/"


@dataclasses.dataclass
class SchemaEntry:
    """One ``/schema/<group>/<name>`` a YAML file builds on, and the ``_target_`` it describes."""

    group: str
    name: str
    target: str
    node: dict[str, Any]
    file: Path


def schema_entries(conf_dir: Path = CONF_DIR) -> dict[str, SchemaEntry]:
    """Every schema the YAML files name, by ``<group>/<name>``, read from the files themselves.

    A YAML file that builds on a schema names it in its defaults list (``/schema/algo/dpo@_here_``, or
    ``/schema/source/files@source`` for a nested node) and sets ``_target_`` in that node; nothing else
    lists the schemas, so adding a config option that needs a new schema is adding its YAML file.

    Raises:
        ConfigError: A file names a schema but sets no ``_target_`` in its node, or two files give one
            schema different targets.
    """
    entries: dict[str, SchemaEntry] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        if "hydra" in path.relative_to(conf_dir).parts:
            continue
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if not isinstance(raw, dict):
            continue
        for default in raw.get("defaults") or []:
            if not (isinstance(default, str) and default.startswith(SCHEMA_PREFIX)):
                continue
            schema, _, package = default[len(SCHEMA_PREFIX) :].partition("@")
            group, _, name = schema.rpartition("/")
            node: Any = raw
            for part in [] if package in ("", "_here_") else package.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            target = node.get("_target_") if isinstance(node, dict) else None
            if not target:
                raise ConfigError(f"{path}: builds on {default} but sets no _target_ in its {package!r} node")
            entry = SchemaEntry(group, name, target, node, path)
            previous = entries.setdefault(schema, entry)
            if previous.target != target or previous.node.get("loss") != node.get("loss"):
                raise ConfigError(
                    f"{path} and {previous.file} both build on {default} but describe different targets "
                    f"({target} and {previous.target}); give one of them its own schema name"
                )
    return entries


@dataclasses.dataclass
class SchemaSpec:
    """One generated schema: where it is stored (``schema/<group>/<name>``), its name in messages, its fields."""

    group: str
    name: str
    title: str
    fields: list[tuple[str, Any, Any]]


def generate_schema_specs(conf_dir: Path = CONF_DIR) -> list[SchemaSpec]:
    """The schema of every ``_target_`` the YAML files build on, generated from the targets (imports them)."""
    from hydra.utils import get_object

    specs = []
    for entry in schema_entries(conf_dir).values():
        target = get_object(entry.target)
        exclude = tuple(getattr(target, "RUNTIME_ARGS", ()))
        extend = getattr(target, "schema_parameters", None)
        extra = extend(entry.node) if callable(extend) else []
        # Named after the option (AlgoDpoSchema), since several options share one target class.
        title = "".join(part.capitalize() for part in f"{entry.group}_{entry.name}".split("_")) + "Schema"
        specs.append(SchemaSpec(entry.group, entry.name, title, schema_fields(target, exclude, extra)))
    return specs


def register_schemas(conf_dir: Path = CONF_DIR, cache_dir: Path | None = None) -> None:
    """Store the schema of every ``_target_`` the YAML files build on under ``schema/<group>/<name>``
    (from the schema cache when it is current: `schema_specs`)."""
    store = ConfigStore.instance()
    for spec in schema_specs(conf_dir, cache_dir):
        store.store(group=f"schema/{spec.group}", name=spec.name, node=build_schema(spec.title, spec.fields))


# --- the schema cache: generating the schemas imports every target (torch, Lightning, transformers: seconds),
# which `--help`, `--cfg` and a typo'd key should not wait for.

SCHEMA_CACHE_FORMAT = 1
# About when this process started reading its sources, less 2 s for file systems with coarse mtimes.
_STARTED_NS = time.time_ns() - 2_000_000_000
_TYPES: dict[str, Any] = {
    "Any": Any,
    **{t.__name__: t for t in _SIMPLE},
    **{f"Optional[{t.__name__}]": Optional[t] for t in _SIMPLE},  # noqa: UP045 - what _schema_type returns
    **{f"list[{t.__name__}]": list[t] for t in _SIMPLE},  # type: ignore[valid-type]
}


def schema_cache_file(conf_dir: Path = CONF_DIR, cache_dir: Path | None = None) -> Path:
    """Where the schemas of ``conf_dir`` are cached: ``<cache dir>/schemas/``, one file per config directory
    and Python environment. The cache directory is ``paths.cache_dir``'s (``$RLHF_LAB_CACHE``, else
    ``~/.cache/rlhf_lab``): the schemas are needed before the config that names it is composed."""
    if cache_dir is None:
        home = os.environ.get("HOME", ".")
        cache_dir = Path(os.environ.get("RLHF_LAB_CACHE") or f"{home}/.cache/rlhf_lab")
    where = hashlib.sha256(f"{conf_dir.resolve()}\0{sys.prefix}".encode()).hexdigest()[:16]
    return cache_dir / "schemas" / f"{conf_dir.name}-{where}.json"


def schema_module_files(conf_dir: Path, imported_while_generating: set[str]) -> list[str]:
    """The files the schemas of ``conf_dir`` come from: rlhf_lab's loaded modules, the module of every class
    of each target (its MRO: a user's loss module, the installed Lightning's), and whatever generating them
    imported. Not every module of the process: a long-lived one (a test session) also holds modules written
    after it started that have nothing to do with the schemas, which would keep the cache from being written.
    """
    from hydra.utils import get_object

    names = set(imported_while_generating)
    names |= {name for name in list(sys.modules) if name == "rlhf_lab" or name.startswith("rlhf_lab.")}
    for entry in schema_entries(conf_dir).values():
        target = get_object(entry.target)
        names |= {getattr(cls, "__module__", None) or "" for cls in getattr(target, "__mro__", (target,))}
    files = {getattr(sys.modules.get(name), "__file__", None) for name in names}
    return sorted(f for f in files if isinstance(f, str) and os.path.isabs(f))


def _file_stats(conf_dir: Path, module_files: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime)`` of every YAML file of ``conf_dir`` and of ``module_files`` (-1: missing)."""
    stats = []
    for file in [*map(str, sorted(conf_dir.rglob("*.yaml"))), *module_files]:
        try:
            stat = os.stat(file)
            stats.append((file, stat.st_size, stat.st_mtime_ns))
        except OSError:
            stats.append((file, -1, -1))
    return stats


def schema_cache_key(conf_dir: Path, module_files: Sequence[str]) -> str:
    """What the cached schemas were generated from: the Python and rlhf_lab versions, and the size and mtime
    of every YAML file of ``conf_dir`` and of every module file loaded when they were generated (rlhf_lab's
    sources, a user's loss module, the installed Lightning's...). Any change is a cache miss."""
    from rlhf_lab import __version__

    hasher = hashlib.sha256(f"{SCHEMA_CACHE_FORMAT}\0{sys.version}\0{__version__}".encode())
    for file, size, mtime in _file_stats(conf_dir, module_files):
        hasher.update(f"\0{file}\0{size}\0{mtime}".encode())
    return hasher.hexdigest()


def _json_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_json_plain, value))
    return isinstance(value, dict) and all(isinstance(k, str) and _json_plain(v) for k, v in value.items())


def _encoded(specs: list[SchemaSpec]) -> list[dict[str, Any]] | None:
    """The specs as JSON values, or None when a default is not a plain value (then they are not cached)."""
    types = {annotation: name for name, annotation in _TYPES.items()}
    if not all(
        annotation in types and _json_plain(default) for s in specs for _, annotation, default in s.fields
    ):
        return None
    return [{**vars(s), "fields": [[n, types[a], d] for n, a, d in s.fields]} for s in specs]


def schema_specs(conf_dir: Path = CONF_DIR, cache_dir: Path | None = None) -> list[SchemaSpec]:
    """The schemas of ``conf_dir``: from the cache when nothing they were generated from has changed
    (`schema_cache_key`), else generated (`generate_schema_specs`) and cached."""
    cache_file = schema_cache_file(conf_dir, cache_dir)
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        if cached["key"] == schema_cache_key(conf_dir, cached["modules"]):
            return [
                SchemaSpec(**{**s, "fields": [(n, _TYPES[a], d) for n, a, d in s["fields"]]})
                for s in cached["schemas"]
            ]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: generate
    before = set(sys.modules)
    specs = generate_schema_specs(conf_dir)
    encoded = _encoded(specs)
    modules = schema_module_files(conf_dir, set(sys.modules) - before)
    # A file changed since this process started may differ from what it loaded (a long-lived session whose
    # sources were edited): then the schemas are not cached, so that no cache is ever older than its key.
    current = all(mtime < _STARTED_NS for _, _, mtime in _file_stats(conf_dir, modules))
    if encoded is not None and current:
        content = {"key": schema_cache_key(conf_dir, modules), "modules": modules, "schemas": encoded}
        with contextlib.suppress(OSError):  # a read-only cache directory: generate every time
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            # Written whole, then renamed: a concurrent run reads the old file or the new one.
            partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(content), encoding="utf-8")
            os.replace(partial, cache_file)
    return specs


#: The user's config directories of the running command, for its child runs (stages, leaderboard, sweeps).
USER_CONFIG_DIRS_ENV = "RLHF_LAB_CONFIG_DIRS"


def user_config_dirs(argv: Sequence[str]) -> list[Path]:
    """The config directories a command line adds to the package's own: ``--config-dir DIR`` (``-cd DIR``)
    and the ``file://`` entries of ``hydra.searchpath=[...]``; those that exist, resolved.

    Their YAML files may build on a schema of their own (``/schema/algo/my_loss@_here_``): the CLI registers
    those schemas too (`register_schemas`), as it does the package's.
    """
    found: list[str] = []
    for index, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif arg.startswith("--config-dir="):
            found.append(arg.partition("=")[2])
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            entries = (entry.strip().strip("'\"") for entry in arg.partition("=")[2].strip("[]").split(","))
            found += [entry[len("file://") :] for entry in entries if entry.startswith("file://")]
    dirs = [Path(entry).expanduser().resolve() for entry in found if entry]
    return [path for path in dict.fromkeys(dirs) if path.is_dir() and path != CONF_DIR]


def config_group_dirs(conf_dir: Path = CONF_DIR) -> list[Path]:
    """The directories of the config groups a run selects: not Hydra's own (``hydra/``), nor ``__pycache__``
    (``conf`` is a Python package, so that Hydra finds it as ``pkg://rlhf_lab.conf``)."""
    return sorted(
        path
        for path in conf_dir.iterdir()
        if path.is_dir() and path.name != "hydra" and not path.name.startswith(("_", "."))
    )


def config_groups_help(conf_dir: Path = CONF_DIR) -> str:
    """``group: option, option, ...`` for every config group a run selects (what ``--help`` lists)."""
    lines = []
    for group in config_group_dirs(conf_dir):
        options = sorted(path.stem for path in group.glob("*.yaml"))
        lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


def compose_package_config(overrides: Sequence[str]) -> Any:
    """``python -m rlhf_lab <overrides>``'s composed config, from anywhere: inside a small Hydra app
    (evaluate, score), whose own Hydra knows only that app's options, the app's Hydra is set aside meanwhile
    and put back after."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose("config", overrides=list(overrides))
    finally:
        # Hydra's context manager restores a copy of its singletons on exit: the instance is looked up again.
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
