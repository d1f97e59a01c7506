"""The bundled image tasks' data: the spatial task is balanced, its text carries no label, and its pixels do."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from PIL import Image

from rlhf_lab.data.synthetic_vision import (
    SPATIAL_TEMPLATES,
    SpatialLayout,
    SyntheticImagePreferences,
    draw_spatial,
    spatial_layout,
)
from rlhf_lab.errors import ConfigError


def _rows(split: str, **fields) -> list[dict]:
    return [row for block in SyntheticImagePreferences(**fields).load()[split] for row in block.rows]


def _pixels(row: dict) -> Image.Image:
    return Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")


def test_a_hand_placed_dot_and_line_are_where_the_layout_says() -> None:
    # Line rows 16-17, a dot of radius 4 centred at (row 8, column 10): "above".
    layout = SpatialLayout(line_row=16, line_width=2, dot_row=8, dot_column=10, radius=4)
    assert layout.relation == "above"
    image = draw_spatial(random.Random(0), layout, 32)
    red, green, blue = image.getpixel((10, 8))  # (x, y): the dot's centre
    assert red >= 195 and green <= 55 and blue <= 55  # (210, 40, 40) +- 15
    for x in (0, 15, 31):  # the line spans the width, (30, 30, 30) +- 15
        assert max(image.getpixel((x, 16))) <= 45 and max(image.getpixel((x, 17))) <= 45
    for x, y in ((10, 3), (10, 13), (10, 20), (25, 8)):  # around them: grey in 158..242, every channel
        assert min(image.getpixel((x, y))) >= 158
    assert SpatialLayout(16, 2, 24, 10, 4).relation == "below"


def test_layouts_keep_the_dot_clear_of_the_line_on_its_side() -> None:
    rng = random.Random(0)
    for size in (16, 32, 64):
        for relation in ("above", "below") * 50:
            layout = spatial_layout(rng, relation, size)
            assert layout.relation == relation
            top, bottom = layout.dot_row - layout.radius, layout.dot_row + layout.radius
            assert top >= 0 and bottom <= size - 1
            # The dot's edge is size // 10 pixels (3 at 32) or more from the line's nearest row.
            last_line_row = layout.line_row + layout.line_width - 1
            distance = layout.line_row - bottom if relation == "above" else top - last_line_row
            assert distance >= max(1, size // 10)
            if size == 32:  # line rows 11-19; dots (radius 4) in rows 4-12 above, 19-27 below
                assert 11 <= layout.line_row <= 19 and layout.radius == 4 and layout.line_width == 2
                assert (4 <= layout.dot_row <= 12) if relation == "above" else (19 <= layout.dot_row <= 27)


def test_the_label_is_recoverable_from_the_pixels() -> None:
    """The darkest row is the line's, the reddest pixels the dot's: their order gives every chosen answer."""
    rows = _rows("val", task="spatial", num_train=1, num_eval=40)
    for row in rows:
        image = _pixels(row)
        width, height = image.size
        darkness = [sum(sum(image.getpixel((x, y))) for x in range(width)) for y in range(height)]
        line = darkness.index(min(darkness))
        red = [
            y for y in range(height) for x in range(width) if (p := image.getpixel((x, y)))[0] - p[1] > 100
        ]
        relation = "above" if sum(red) / len(red) < line else "below"
        assert row["chosen"][0]["content"] == f"It is {relation} the line."


def test_spatial_pairs_are_balanced_and_their_text_is_independent_of_the_label() -> None:
    for split, count in (("train", 101), ("val", 64)):
        rows = _rows(split, task="spatial", num_train=101, num_eval=64)
        chosen = Counter(row["chosen"][0]["content"] for row in rows)
        rejected = Counter(row["rejected"][0]["content"] for row in rows)
        # Exactly half above (one more when odd), and every answer rejected as often as the other is chosen.
        assert chosen == {"It is above the line.": (count + 1) // 2, "It is below the line.": count // 2}
        assert rejected == {"It is below the line.": (count + 1) // 2, "It is above the line.": count // 2}
        assert all(row["chosen"] != row["rejected"] for row in rows)
    rows = _rows("train", task="spatial", num_train=400, num_eval=1)
    by_label: dict[str, Counter] = {"above": Counter(), "below": Counter()}
    for row in rows:
        label = row["chosen"][0]["content"].split()[2]
        by_label[label][row["prompt"][0]["content"]] += 1
    questions = {t.format(image="<image>") for t in SPATIAL_TEMPLATES}
    assert set(by_label["above"]) == set(by_label["below"]) == questions  # no question only one label gets
    for question in questions:  # each question about as often with either label (200 rows each, 5 questions)
        assert abs(by_label["above"][question] - by_label["below"][question]) <= 30


def test_the_colour_task_is_unchanged_and_bad_options_fail() -> None:
    (row,) = _rows("val", num_train=1, num_eval=1)
    assert row["chosen"][0]["content"].startswith("It is ") and "line" not in row["chosen"][0]["content"]
    assert _pixels(row).size == (32, 32)
    with pytest.raises(ConfigError, match="data.source.task"):
        SyntheticImagePreferences(task="count")
    with pytest.raises(ConfigError, match="data.source.image_size"):
        SyntheticImagePreferences(task="spatial", image_size=12)
