"""What the data layer read, said once: the layouts of each split's files, and what no layout read."""

from __future__ import annotations

import logging
from typing import Any

from rlhf_lab.data.formats import LAYOUTS, Conversion

log = logging.getLogger("rlhf_lab.data.datamodule")

#: The splits a run trains and validates on.
SPLITS = ("train", "val")


def data_report(conversions: dict[str, list[Conversion]], batch_kind: str) -> dict[str, Any]:
    """``data/format`` (the layouts, comma-separated), ``data/ignored_columns`` (columns and message keys no
    layout read; for online RL, ``batch_kind == "prompts"``, the columns go to the reward functions instead:
    ``data/reward_columns``) and ``data/images_placed``."""
    read = [c for split in SPLITS for c in conversions.get(split, [])]
    formats = list(dict.fromkeys(c.format for c in read if c.rows))
    columns = sorted({column for c in read for column in c.unused_columns})
    keys = sorted({key for c in read for key in c.unused_keys})
    report: dict[str, Any] = {"data/format": ", ".join(formats)}
    if batch_kind == "prompts":
        report["data/reward_columns"] = ", ".join(columns)
        report["data/ignored_columns"] = ", ".join(keys)
    else:
        report["data/ignored_columns"] = ", ".join(columns + keys)
    report["data/images_placed"] = float(sum(c.images_placed for c in read))
    return report


def log_report(conversions: dict[str, list[Conversion]], report: dict[str, Any]) -> None:
    """Log each file's rows and layout (detected or configured, with the peers' names for it), then what
    went to the reward functions and what no layout read."""
    for split in SPLITS:
        for conversion in conversions.get(split, []):
            how = "detected" if conversion.detected else "configured"
            peers = LAYOUTS[conversion.format].peers if conversion.format in LAYOUTS else ""
            log.info(
                "data[%s]: %s: %d rows, layout %s (%s): %s",
                split,
                conversion.file,
                conversion.rows,
                conversion.format,
                how,
                peers,
            )
    if report.get("data/reward_columns"):
        log.info("columns passed to the reward functions: %s", report["data/reward_columns"])
    if report["data/ignored_columns"]:
        log.warning("ignored columns (no layout reads them): %s", report["data/ignored_columns"])
