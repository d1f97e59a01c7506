"""A training run that SIGKILLs itself at a chosen moment (tests/test_kill_resume.py).

    python -m tests.scripts.killable_run <point> [overrides ...]

Points: ``none``; ``step:K`` (as training step K+1 starts); ``save:N`` (in the middle of writing the Nth
checkpoint file: half its bytes on disk; or of a sharded checkpoint directory: this rank's shards in the
staging directory, not renamed into place); ``val:N`` (in the Nth validation batch of the run);
``export`` (with the export written to its staging directory, before it is swapped in).
The kill is ``SIGKILL``: no handler, no flush, no cleanup, as a pre-empted or OOM-killed process dies. With
``RLHF_LAB_KILL_GROUP=1`` (a multi-process run started in its own session) it kills the whole process group:
every rank at once, as a node's loss does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    if os.environ.get("RLHF_LAB_KILL_GROUP") == "1":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    kind, _, number = point.partition(":")
    count = {"seen": 0}
    if kind == "step":
        from rlhf_lab.objectives.base import AlignmentObjective
        from rlhf_lab.objectives.online import OnlineObjective

        for cls in (AlignmentObjective, OnlineObjective):  # online RL has its own training step
            original = cls.training_step

            def training_step(self, batch, batch_idx, original=original):
                if self.trainer.global_step == int(number):
                    die()
                return original(self, batch, batch_idx)

            cls.training_step = training_step
    elif kind == "val":
        from rlhf_lab.objectives.base import AlignmentObjective
        from rlhf_lab.objectives.online import OnlineObjective

        for cls in (AlignmentObjective, OnlineObjective):
            original_val = cls.validation_step

            def validation_step(self, batch, batch_idx, original_val=original_val):
                count["seen"] += 1
                if count["seen"] == int(number):
                    die()
                return original_val(self, batch, batch_idx)

            cls.validation_step = validation_step
    elif kind == "save":
        import io

        import torch

        from rlhf_lab import checkpoints

        original_save = checkpoints.atomic_torch_save

        def atomic_torch_save(value, path):
            count["seen"] += 1
            if count["seen"] != int(number):
                return original_save(value, path)
            buffer = io.BytesIO()
            torch.save(value, buffer)
            staging = path.with_name(f".{path.name}{checkpoints.TEMPORARY}{os.getpid()}")
            staging.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            die()

        checkpoints.atomic_torch_save = atomic_torch_save
        original_directory_save = checkpoints.atomic_directory_save

        def atomic_directory_save(strategy, filepath, write):
            count["seen"] += 1
            if count["seen"] != int(number):
                return original_directory_save(strategy, filepath, write)

            def write_then_die(staging):
                write(staging)
                if strategy.is_global_zero:
                    die()

            return original_directory_save(strategy, filepath, write_then_die)

        checkpoints.atomic_directory_save = atomic_directory_save
    elif kind == "export":
        from rlhf_lab import export

        original_replace = export.os.replace

        def replace(source, target):
            if Path(source).name.startswith(".export.tmp-"):
                die()
            return original_replace(source, target)

        export.os.replace = replace
    elif kind != "none":
        raise SystemExit(f"unknown kill point {point!r}")


def main(point: str, *overrides: str) -> None:
    from omegaconf import open_dict

    from rlhf_lab.cli import quiet_libraries
    from rlhf_lab.config import register_schemas
    from rlhf_lab.train import run
    from tests.conftest import compose_config

    quiet_libraries()
    register_schemas()
    run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")))
    cfg = compose_config([o for o in overrides if not o.startswith("run_dir=")], run_dir=run_dir)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    arm(point)
    run(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:])
