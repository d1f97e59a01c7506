"""`rlhf_lab.lightning_compat` against the installed Lightning: each function's private name still exists and
still means what rlhf_lab relies on (checked on a tiny real `Trainer`), and no other rlhf_lab module reads a
private Lightning name (an audit of the source)."""

from __future__ import annotations

import ast
import csv
import importlib
import inspect
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from packaging.specifiers import SpecifierSet
from torch.utils.data import DataLoader, Sampler

from rlhf_lab import lightning_compat as compat
from rlhf_lab.callbacks import FiniteModelCheckpoint

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rlhf_lab"
COMPAT = PACKAGE / "lightning_compat.py"


# --- A tiny real fit ------------------------------------------------------------------------------------------


class Counting(Sampler[int]):
    """Sequential indices; notes what `batches_processed_this_epoch` said when an epoch's iteration began (as
    the datamodule's resumable sampler asks), skipping that many."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.trainer: L.Trainer | None = None
        self.offsets: list[int] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        offset = compat.batches_processed_this_epoch(self.trainer) if self.trainer is not None else 0
        self.offsets.append(offset)
        return iter(range(offset, self.size))

    def __len__(self) -> int:
        return self.size


class Tiny(L.LightningModule):
    def __init__(self, train_batches: int = 8, val_losses: list[float] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.data = torch.randn(train_batches, 2, generator=torch.Generator().manual_seed(0))
        self.sampler = Counting(train_batches)
        self.val_losses = list(val_losses or [])
        self.validations = 0
        self.seen_trainer: list[L.Trainer | None] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen_trainer.append(compat.attached_trainer(self))
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.log("train/batch", float(batch_idx), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        value = (
            self.val_losses[self.validations] if self.val_losses else float(self.layer(batch).pow(2).mean())
        )
        self.log("val/loss", value)

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        self.sampler.trainer = self.trainer
        return DataLoader(self.data, batch_size=1, sampler=self.sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data[:2], batch_size=1)


class Recorder(L.Callback):
    """Every compat reading at each training batch's start and end, keyed by (epoch, batch_idx)."""

    def __init__(self) -> None:
        self.start: dict[tuple[int, int], dict[str, Any]] = {}
        self.end: dict[tuple[int, int], dict[str, Any]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.start[trainer.current_epoch, batch_idx] = {
            "accumulate": compat.should_accumulate(trainer),
            "processed": compat.batches_processed_this_epoch(trainer),
            "stepped": compat.batches_that_stepped(trainer),
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.end[trainer.current_epoch, batch_idx] = {
            "accumulate": compat.should_accumulate(trainer),
            "validation": compat.validation_due(trainer),
            "stepped": compat.batches_that_stepped(trainer),
            "logs": compat.step_logs_due(trainer),
            "pending": {k: float(v) for k, v in compat.pending_logged_metrics(trainer).items()},
            "processed": compat.batches_processed_this_epoch(trainer),
            "global_step": trainer.global_step,
            "trainer": compat.attached_trainer(pl_module),
        }


def fit(tmp_path: Path, module: Tiny, *callbacks: L.Callback, **trainer_args: Any) -> L.Trainer:
    args: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "accumulate_grad_batches": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": CSVLogger(tmp_path, name="", version=""),
        "default_root_dir": tmp_path,
        **trainer_args,
    }
    ckpt_path = args.pop("ckpt_path", None)
    trainer = L.Trainer(callbacks=list(callbacks), **args)
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def column(rows: dict[tuple[int, int], dict[str, Any]], key: str) -> list[Any]:
    return [rows[index][key] for index in sorted(rows)]


@pytest.fixture(scope="module")
def eight_batches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, L.Trainer, Tiny, Path]:
    """8 batches, accumulate_grad_batches=2, val_check_interval=4, log_every_n_steps=2."""
    tmp_path = tmp_path_factory.mktemp("eight")
    recorder, module = Recorder(), Tiny()
    trainer = fit(tmp_path, module, recorder, val_check_interval=4)
    return recorder, trainer, module, tmp_path


def test_should_accumulate_is_true_on_the_first_micro_batch_and_false_on_the_second(eight_batches) -> None:
    recorder, *_ = eight_batches
    assert column(recorder.start, "accumulate") == [True, False] * 4
    assert column(recorder.end, "accumulate") == [True, False] * 4
    # False exactly on the batches that stepped the optimiser.
    assert column(recorder.end, "global_step") == [0, 1, 1, 2, 2, 3, 3, 4]


def test_the_last_batch_of_an_epoch_steps_even_mid_accumulation(tmp_path: Path) -> None:
    recorder = Recorder()
    fit(tmp_path, Tiny(train_batches=5), recorder, max_epochs=2, check_val_every_n_epoch=2)
    assert column(recorder.end, "accumulate") == [True, False, True, False, False] * 2
    # Validation only after the second epoch's last batch; the counters run on across the epoch.
    assert column(recorder.end, "validation") == [False] * 9 + [True]
    assert column(recorder.end, "stepped") == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]
    assert column(recorder.end, "processed") == [1, 2, 3, 4, 5] * 2


def test_validation_due_right_before_each_validation(eight_batches) -> None:
    recorder, _, module, _ = eight_batches
    assert column(recorder.end, "validation") == [False, False, False, True, False, False, False, True]
    assert module.validations == 2


def test_batches_that_stepped_is_the_step_of_the_row_lightning_logs(eight_batches) -> None:
    recorder, *_ = eight_batches
    assert column(recorder.start, "stepped") == [0, 0, 1, 1, 2, 2, 3, 3]
    assert column(recorder.end, "stepped") == [0, 0, 1, 1, 2, 2, 3, 3]


def test_step_logs_due_and_pending_metrics_are_the_row_lightning_then_writes(eight_batches) -> None:
    recorder, _, _, tmp_path = eight_batches
    ends = [recorder.end[index] for index in sorted(recorder.end)]
    # log_every_n_steps=2: the rows of the 2nd and 4th stepping batches (batch 3 and 7).
    assert [end["logs"] for end in ends if not end["accumulate"]] == [False, True, False, True]
    assert [end["pending"]["train/batch"] for end in ends] == [float(i) for i in range(8)]
    predicted = [
        {**end["pending"], "step": float(end["stepped"])}
        for end in ends
        if end["logs"] and not end["accumulate"]
    ]
    with (tmp_path / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    written = [{key: float(row[key]) for key in ("train/loss", "train/batch", "step")} for row in rows]
    assert written == predicted
    assert len(predicted) == 2


def test_step_logs_due_is_false_without_logging(tmp_path: Path) -> None:
    recorder = Recorder()
    fit(tmp_path, Tiny(train_batches=4), recorder, log_every_n_steps=0)
    assert column(recorder.end, "logs") == [False] * 4


def test_batches_processed_this_epoch_counts_the_current_batch_from_its_end(eight_batches) -> None:
    recorder, *_ = eight_batches
    assert column(recorder.start, "processed") == list(range(8))
    assert column(recorder.end, "processed") == list(range(1, 9))


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_batches_processed_this_epoch_is_restored_from_a_checkpoint_saved_at_batch_end(
    tmp_path: Path,
) -> None:
    """What the datamodule's resumable sampler reads: a checkpoint saved in ``on_train_batch_end`` of batch 2
    resumes at batch 3, and the sampler is asked after the restore."""
    path = tmp_path / "mid.ckpt"

    class SaveAt(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if args[-1] == 2:
                trainer.save_checkpoint(path)

    fit(tmp_path / "first", Tiny(), SaveAt())
    recorder, module = Recorder(), Tiny()
    fit(tmp_path / "resumed", module, recorder, ckpt_path=path)
    assert module.sampler.offsets == [3]
    assert min(recorder.start) == (0, 3)
    assert recorder.start[0, 3]["processed"] == 3
    assert recorder.start[0, 3]["stepped"] == 1  # batches 0-1 stepped; batch 2 accumulated


def test_attached_trainer_is_none_until_a_trainer_takes_the_module(eight_batches) -> None:
    recorder, trainer, module, _ = eight_batches
    assert compat.attached_trainer(Tiny()) is None
    assert set(map(id, module.seen_trainer)) == {id(trainer)}
    assert all(reading is trainer for reading in column(recorder.end, "trainer"))


@pytest.mark.parametrize("kind", [FiniteModelCheckpoint, ModelCheckpoint])
def test_finite_model_checkpoint_never_ranks_a_nan_through_the_public_hook(
    tmp_path: Path, kind: type
) -> None:
    """``check_monitor_top_k`` is still where Lightning decides whether a value enters the top k: with
    FiniteModelCheckpoint the NaN validations keep nothing (Lightning's own keeps the first, as the worst)."""
    checkpoint = kind(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=2)
    module = Tiny(val_losses=[math.nan, 0.5, math.nan])
    fit(tmp_path, module, checkpoint, enable_checkpointing=True, val_check_interval=2, limit_train_batches=6)
    assert module.validations == 3
    assert float(checkpoint.best_model_score) == 0.5
    kept = sorted(float(score) for score in checkpoint.best_k_models.values())
    assert kept == ([0.5] if kind is FiniteModelCheckpoint else [0.5, math.inf])
    assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == len(kept)


# --- Loggers ----------------------------------------------------------------------------------------------------


def test_cached_experiment_is_the_object_lightnings_logger_uses(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="", version="")
    made: list[object] = []

    def create() -> object:
        made.append(object())
        return made[-1]

    first = compat.cached_experiment(logger, create)
    assert compat.cached_experiment(logger, create) is first and made == [first]
    assert logger.experiment is first


def test_wandb_offline_switch_reaches_wandb_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    calls: list[dict[str, Any]] = []
    run = object()

    def init(**kwargs: Any) -> object:
        calls.append(kwargs)
        return run

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setenv("WANDB_MODE", "online")  # Lightning sets it when offline; restored afterwards
    logger = WandbLogger(project="compat", save_dir=str(tmp_path), mode="online")
    assert not compat.wandb_offline(logger) and not compat.wandb_run_started(logger)
    compat.switch_wandb_offline(logger)
    assert compat.wandb_offline(logger) and not compat.wandb_run_started(logger)
    assert logger.experiment is run
    assert compat.wandb_run_started(logger)
    assert [call["mode"] for call in calls] == ["offline"]
    assert compat.wandb_offline(WandbLogger(project="compat", save_dir=str(tmp_path), offline=True))


def test_experiment_writer_hooks_are_called_where_lightning_prepares_and_rewrites(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("a,step\n1.0,0\n")
    calls: list[Any] = []

    class Probe(compat.ExperimentWriterHooks):
        def prepare_metrics_file(self) -> None:
            calls.append("prepare")
            self.metrics_keys = ["a", "step"]  # keep the file (Lightning's own step would delete it)

        def rewrite_metrics_file(self, fieldnames: list[str]) -> None:
            calls.append(list(fieldnames))
            super().rewrite_metrics_file(fieldnames)

    writer = Probe(log_dir=str(tmp_path))
    assert calls == ["prepare"]
    writer.log_metrics({"a": 2.0, "b": 3.0}, step=1)
    writer.save()
    assert calls == ["prepare", ["a", "b", "step"]]
    with (tmp_path / "metrics.csv").open(newline="") as file:
        assert list(csv.DictReader(file)) == [
            {"a": "1.0", "b": "", "step": "0"},
            {"a": "2.0", "b": "3.0", "step": "1"},
        ]
    # Lightning's own behaviour behind the hook: an existing metrics.csv is deleted.
    compat.ExperimentWriterHooks(log_dir=str(tmp_path))
    assert not (tmp_path / "metrics.csv").exists()


# --- Strategies ----------------------------------------------------------------------------------------------


def test_deepspeed_engine_hook_is_where_lightning_builds_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed")
    import deepspeed

    engine = type("Engine", (), {"lr_scheduler": None})()
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    built: list[tuple[Any, ...]] = []
    monkeypatch.setattr(deepspeed, "initialize", lambda **kwargs: (engine, optimizer, None, None))

    class Probe(compat.DeepSpeedEngineHook):
        def initialize_engine(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> Any:
            built.append((model, optimizer, lr_scheduler))
            return super().initialize_engine(model, optimizer, lr_scheduler)

    strategy = Probe(
        config={"optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "train_micro_batch_size_per_gpu": 1},
        parallel_devices=[torch.device("cpu")],
    )
    model = torch.nn.Linear(1, 1)
    strategy._initialize_deepspeed_train(model)  # what DeepSpeedStrategy.setup runs when fitting
    assert built == [(model, None, None)]
    assert strategy.model is engine
    assert strategy.optimizers == [optimizer]


def test_init_deepspeed_distributed_starts_deepspeeds_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed")
    import deepspeed
    from lightning.fabric.plugins.environments import LightningEnvironment

    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(name, "0")  # Lightning writes them; restored afterwards
    started: list[tuple[Any, ...]] = []
    monkeypatch.setattr(deepspeed, "init_distributed", lambda *args, **kwargs: started.append((args, kwargs)))
    environment = LightningEnvironment()
    strategy = compat.DeepSpeedEngineHook(
        config={"train_micro_batch_size_per_gpu": 1},
        parallel_devices=[torch.device("cpu")],
        cluster_environment=environment,
    )
    compat.init_deepspeed_distributed(strategy)
    assert len(started) == 1
    args, kwargs = started[0]
    assert args == ("gloo",) and kwargs["distributed_port"] == environment.main_port


# --- The pin ---------------------------------------------------------------------------------------------------


def test_the_installed_lightning_is_the_supported_one_and_pyproject_pins_it() -> None:
    assert L.__version__ in SpecifierSet(compat.SUPPORTED)
    pins = re.findall(r'^\s*"lightning([^"]*)"', (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert pins == [compat.SUPPORTED]


def test_a_missing_private_method_fails_at_import_naming_the_version() -> None:
    class Bare:
        pass

    with pytest.raises(compat.LightningCompatError, match=re.escape(f"lightning {L.__version__}")):
        compat._require(Bare, "_should_accumulate")
    with pytest.raises(compat.LightningCompatError, match="_batches_that_stepped"):
        compat._read(Bare(), "_batches_that_stepped")


# --- The audit: no private Lightning name outside lightning_compat.py ------------------------------------------

# Private Lightning names flagged wherever they appear outside the compat module: those it wraps, those
# rlhf_lab once used, and the internals that are easiest to reach for.
KNOWN_PRIVATE = compat.PRIVATE_NAMES | {
    "_save_topk_checkpoint",
    "_convert_params",
    "_trainer",
    "_fabric",
    "_results",
    "_active_loop",
    "_checkpoint_connector",
    "_accelerator_connector",
    "_callback_connector",
    "_data_connector",
    "_signal_connector",
    "_combined_loader",
    "_fs",
}

# A private attribute read on one of these is a Lightning internal, whatever the name.
LIGHTNING_RECEIVER = re.compile(
    r"(?:^|\.)(?:trainer|fit_loop|epoch_loop|val_loop|test_loop|predict_loop|validate_loop|strategy|"
    r"precision_plugin|accelerator|lightning_module|checkpoint_callback|checkpoint_io|\w*connector|"
    r"batch_progress|optim_progress)$"
)
LIGHTNING_ROOTS = ("lightning", "pytorch_lightning", "lightning_fabric")

# Files owned by others that still read Lightning privates: {file: names}. Each entry names the compat
# function to use instead; the owner switches to it and deletes the entry (the audit fails on a stale entry).
ALLOWED: dict[str, set[str]] = {}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _lightning_class(obj: Any) -> bool:
    return inspect.isclass(obj) and obj.__module__.split(".")[0] in LIGHTNING_ROOTS


class SourceFile:
    """One rlhf_lab file's classes and imported names (from any import statement in it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.classes: dict[str, ast.ClassDef] = {}
        self.imports: dict[str, tuple[str, str | None]] = {}  # local name -> (module, attribute or None)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef):
                self.classes.setdefault(node.name, node)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.imports[local] = ((alias.asname and alias.name) or local, None)


@cache
def _source(module: str) -> SourceFile | None:
    base = REPO / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return SourceFile(path)
    return None


def _lightning_bases(source: SourceFile, expr: ast.expr, depth: int = 0) -> list[type]:
    """The Lightning classes a base-class expression of ``source`` stands for (followed through rlhf_lab)."""
    if depth > 10:
        return []
    parts: list[str] = []
    node: ast.expr = expr
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    head, rest = node.id, parts
    if not rest and head in source.classes:
        return [b for base in source.classes[head].bases for b in _lightning_bases(source, base, depth + 1)]
    if head not in source.imports:
        return []
    module, attribute = source.imports[head]
    names = rest if attribute is None else [attribute, *rest]
    if module.split(".")[0] in LIGHTNING_ROOTS:
        obj: Any = importlib.import_module(module)
        for name in names:
            obj = getattr(obj, name, None)
        return [obj] if _lightning_class(obj) else []
    if module.split(".")[0] == "rlhf_lab" and len(names) == 1:
        other = _source(module)
        if other is not None:
            return _lightning_bases(other, ast.Name(id=names[0]), depth + 1)
    return []


@cache
def _private_names_of(cls: type) -> frozenset[str]:
    """Private names a Lightning class (and its Lightning ancestors) define: methods, properties, class
    attributes, and the attributes their methods assign on ``self``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not _lightning_class(klass):
            continue
        names.update(name for name in vars(klass) if _private(name))
        try:
            text = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names.update(re.findall(r"self\.(_[A-Za-z]\w*)\s*(?::[^=\n]+)?=(?!=)", text))
    return frozenset(names)


def _findings(source: SourceFile) -> list[tuple[int, str, str]]:
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(source.tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIGHTNING_ROOTS:
            if any(_private(part) for part in node.module.split(".")):
                found.append((node.lineno, node.module, "import from a private Lightning module"))
            found += [
                (node.lineno, a.name, "private Lightning import") for a in node.names if _private(a.name)
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            receiver = ast.unparse(node.value)
            if node.attr in KNOWN_PRIVATE:
                found.append((node.lineno, node.attr, f"{receiver}.{node.attr}"))
            elif LIGHTNING_RECEIVER.search(receiver):
                found.append((node.lineno, node.attr, f"private attribute of a Lightning object: {receiver}"))
            elif receiver.split(".")[0] in (*LIGHTNING_ROOTS, "L", "pl") and (
                receiver.split(".")[0] not in source.imports
                or source.imports[receiver.split(".")[0]][0].split(".")[0] in LIGHTNING_ROOTS
            ):
                found.append((node.lineno, node.attr, f"private Lightning module member: {receiver}"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in KNOWN_PRIVATE:
            found.append((node.lineno, node.name, "defines a private Lightning name"))
    for klass in (node for node in ast.walk(source.tree) if isinstance(node, ast.ClassDef)):
        private = frozenset().union(
            *(_private_names_of(base) for expr in klass.bases for base in _lightning_bases(source, expr))
        )
        if not private:
            continue
        for node in ast.walk(klass):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in private:
                found.append((node.lineno, node.name, f"{klass.name} overrides a private Lightning method"))
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and ast.unparse(node.value) in ("self", "super()", "cls")
            ):
                found.append((node.lineno, node.attr, f"{klass.name} reads Lightning's private {node.attr}"))
    first: dict[tuple[int, str], str] = {}
    for line, name, why in found:
        first.setdefault((line, name), why)
    return sorted((line, name, why) for (line, name), why in first.items())


def _audit() -> dict[str, list[tuple[int, str, str]]]:
    """Findings per file (relative to the repository), the compat module excepted."""
    return {
        path.relative_to(REPO).as_posix(): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != COMPAT and (found := _findings(SourceFile(path)))
    }


def test_no_private_lightning_name_outside_the_compat_module() -> None:
    unexpected = [
        f"{file}:{line}: {name} ({why})"
        for file, found in _audit().items()
        for line, name, why in found
        if name not in ALLOWED.get(file, set())
    ]
    assert not unexpected, (
        "private Lightning names outside rlhf_lab/lightning_compat.py (add a named function there):\n"
        + "\n".join(unexpected)
    )


def test_the_allowlist_has_no_stale_entry() -> None:
    """An owner who switched a file to the compat functions deletes its ALLOWED entry."""
    seen = {file: {name for _, name, _ in found} for file, found in _audit().items()}
    stale = [
        f"{file}: {sorted(names - seen.get(file, set()))}"
        for file, names in ALLOWED.items()
        if names - seen.get(file, set())
    ]
    assert not stale, "no longer used: remove from ALLOWED in tests/test_lightning_compat.py:\n" + "\n".join(
        stale
    )


def test_the_audit_finds_what_the_compat_module_replaced(tmp_path: Path) -> None:
    """The audit itself: the accesses rlhf_lab had before the compat module are all caught."""
    path = tmp_path / "old.py"
    path.write_text(
        "from lightning.fabric.utilities.logger import _convert_params\n"
        "from lightning.pytorch.callbacks import ModelCheckpoint\n"
        "from lightning.pytorch.loggers.csv_logs import ExperimentWriter\n"
        "def follows(trainer):\n"
        "    loop = trainer.fit_loop\n"
        "    return loop.epoch_loop._should_check_val_fx(loop._data_fetcher)\n"
        "def row(trainer):\n"
        "    return trainer._logger_connector, trainer.fit_loop.epoch_loop._batches_that_stepped\n"
        "class Best(ModelCheckpoint):\n"
        "    def _save_topk_checkpoint(self, trainer, candidates):\n"
        "        super()._save_topk_checkpoint(trainer, candidates)\n"
        "class Writer(ExperimentWriter):\n"
        "    def _check_log_dir_exists(self):\n"
        "        return self._fs\n"
        "    def _on_new_private_name(self):\n"
        "        return self._ours\n"
    )
    names = {name for _, name, _ in _findings(SourceFile(path))}
    assert names == {
        "_convert_params",
        "_should_check_val_fx",
        "_data_fetcher",
        "_logger_connector",
        "_batches_that_stepped",
        "_save_topk_checkpoint",
        "_check_log_dir_exists",
        "_fs",
    }


def test_every_private_name_the_compat_module_declares_is_one_it_uses() -> None:
    text = COMPAT.read_text()
    for name in compat.PRIVATE_NAMES:
        assert text.count(name) >= 2, name  # declared, and read or overridden
