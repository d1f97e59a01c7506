"""A sampling run's progress on disk: chunk files renamed into place, so an interrupted run resumes.

``<out_dir>/chunks/chunk_NNNNNN.jsonl`` holds the records (one per prompt) of chunk ``N``: prompts
``[N * chunk_size, (N + 1) * chunk_size)``. A chunk is written whole to a temporary file beside it and
renamed into place (`atomic_write_text`), so a kill leaves each chunk complete or absent, never half;
a run started again samples only the chunks that are absent, and no prompt is ever sampled twice.
``settings.json`` records what the records depend on (model, data, seed, sampling, rewards): a run started
again in the same ``out_dir`` with other settings is refused rather than mixed in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlhf_lab.atomic import atomic_write_text
from rlhf_lab.errors import ConfigError
from rlhf_lab.leaderboard.resumable import read_json_object

CHUNK = re.compile(r"^chunk_(\d{6})\.jsonl$")


class ChunkStore:
    """The chunk files of ``out_dir``.

    Args:
        out_dir: The sampling run's output directory.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / "chunks"

    def path(self, index: int) -> Path:
        return self.dir / f"chunk_{index:06d}.jsonl"

    def done(self) -> set[int]:
        """The chunks written (whole) so far."""
        if not self.dir.is_dir():
            return set()
        return {int(match[1]) for path in self.dir.iterdir() if (match := CHUNK.match(path.name))}

    def write(self, index: int, records: list[dict[str, Any]]) -> None:
        """Write chunk ``index`` whole, atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path(index), "".join(json.dumps(r) + "\n" for r in records))

    def read(self, index: int) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path(index).read_text().splitlines()]

    def remove_partial(self) -> None:
        """Remove the temporary files of chunks a killed run was writing."""
        if self.dir.is_dir():
            for path in self.dir.glob(".chunk_*.tmp-*"):
                path.unlink(missing_ok=True)

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Record ``settings``, or check them against those recorded by the run this one resumes.

        Raises:
            ConfigError: ``out_dir`` holds chunks sampled with other settings (the keys that differ named).
        """
        path = self.out_dir / "settings.json"
        settings = json.loads(json.dumps(settings, sort_keys=True))
        recorded = read_json_object(path)
        if recorded is not None and self.done():
            differ = sorted(key for key in {*recorded, *settings} if recorded.get(key) != settings.get(key))
            if differ:
                raise ConfigError(
                    f"out_dir={self.out_dir} holds samples drawn with other settings ({', '.join(differ)} "
                    "differ); give another out_dir, or remove it to start again"
                )
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
