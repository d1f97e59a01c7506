"""Bundled image preference tasks that can only be solved by looking at the image.

``task=colour`` (the default): each image is a noisy light-grey canvas with one shape (circle, square or
triangle; random size and place) painted in one of six colours, with per-image jitter. The prompt asks for the colour of the shape; the
chosen answer names the true colour and the rejected one another colour drawn uniformly. The text of a
prompt says nothing about the colour (the templates, and the shape they may name, are drawn independently
of it) and every colour is chosen and rejected equally often, so a model that ignores the image stays at
chance (0.5) on held-out pairs, and so does the same run with ``data.blank_images=true``.

``task=spatial``: each image is a noisy light-grey canvas crossed by a dark horizontal line at a random
height, with a red dot above or below it (clear of the line, anywhere along it). The prompt asks whether
the dot is above or below the line; the chosen answer names the true relation and the rejected one the
other. A task of where, not what colour: at 32 pixels the line's top row is 11-19 and a dot's centre is in
rows 4-12 when above and 19-27 when below, so the dot's height alone decides it (a model must see where the
dot is; comparing it with the line is not needed). Exactly half of each split's dots
are above (every answer is chosen and rejected equally often) and the templates, which name both relations
in either order, are drawn independently of the label, so text alone, or blank images, give chance (0.5).

Images are PNG bytes in an ``images`` column (``{"bytes": ...}``, as Hugging Face datasets store an Image
feature), with an ``<image>`` placeholder in the prompt, in the conversational format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.images import IMAGE_PLACEHOLDER, encode_png
from rlhf_lab.data.sources import RowBlock, Splits
from rlhf_lab.errors import check_choice, check_range

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (225, 205, 40),
    "purple": (140, 50, 170),
    "orange": (235, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = [
    "{image}What colour is the shape?",
    "{image}Which colour does the shape in this picture have?",
    "Look at the picture. {image}What is the colour of the {shape}?",
    "{image}Name the colour of the {shape}.",
    "Here is an image: {image}Tell me the colour of the shape in it.",
]
ANSWER = "It is {colour}."
ROW_LAYOUTS = ("pairs", "prompts")
TASKS = ("colour", "spatial")

RELATIONS = ("above", "below")
SPATIAL_TEMPLATES = [
    "{image}Is the dot above or below the line?",
    "{image}Is the dot below or above the line?",
    "Look at the picture. {image}Is the red dot above the line or below it?",
    "{image}Where is the dot: below the line or above it?",
    "Here is an image: {image}Tell me whether the dot is above or below the line.",
]
SPATIAL_ANSWER = "It is {relation} the line."
#: The line's and the dot's colours (before jitter). One dot colour: a dot of any of six colours varies the
#: image far more than where the dot is, and drowned the position in the tiny VLM's first gradients (a red or
#: blue dot at random, seed 42: held-out accuracy 0.50 where one red dot gives 1.00, model.patch_size=16).
LINE = (30, 30, 30)
DOT = (210, 40, 40)


@dataclass(frozen=True)
class SpatialLayout:
    """Where the line and the dot of a spatial image are, in pixels (row 0 is the top).

    Attributes:
        line_row: The line's first row.
        line_width: The line's thickness in rows.
        dot_row: The dot's centre row.
        dot_column: The dot's centre column.
        radius: The dot's radius.
    """

    line_row: int
    line_width: int
    dot_row: int
    dot_column: int
    radius: int

    @property
    def relation(self) -> str:
        """``above`` when the dot's centre is above the line (a smaller row), else ``below``."""
        return "above" if self.dot_row < self.line_row else "below"


def spatial_layout(rng: random.Random, relation: str, size: int) -> SpatialLayout:
    """A line at a random height and a dot ``relation`` of it, the dot's edge ``size // 10`` pixels or more
    from the line (3 at 32 pixels: a gap even after resizing).

    The line stays far enough from both edges for a whole dot on either side (at 32 pixels: line rows 11-19,
    dots of radius 4 centred in rows 4-12 above or 19-27 below, so the dot's height alone gives the answer).
    """
    radius = max(1, size // 8)
    width = max(1, size // 16)
    gap = radius + max(1, size // 10)  # from the line's edge to the dot's centre
    # Room for a whole dot, clear of the line, on either side.
    line_row = rng.randint(radius + gap, size - radius - gap - width)
    if relation == "above":
        dot_row = rng.randint(radius, line_row - gap)
    else:
        dot_row = rng.randint(line_row + width - 1 + gap, size - 1 - radius)
    dot_column = rng.randint(radius, size - 1 - radius)
    return SpatialLayout(line_row, width, dot_row, dot_column, radius)


def draw_spatial(rng: random.Random, layout: SpatialLayout, size: int) -> Any:
    """One spatial image: the dark line across the whole width and the red dot, on noisy grey."""
    from PIL import ImageDraw

    image = _canvas(rng, size)
    canvas = ImageDraw.Draw(image)
    line = tuple(min(255, max(0, channel + rng.randint(-15, 15))) for channel in LINE)
    canvas.rectangle((0, layout.line_row, size - 1, layout.line_row + layout.line_width - 1), fill=line)
    fill = tuple(min(255, max(0, channel + rng.randint(-15, 15))) for channel in DOT)
    row, column, radius = layout.dot_row, layout.dot_column, layout.radius
    canvas.ellipse((column - radius, row - radius, column + radius, row + radius), fill=fill)
    return image


def _canvas(rng: random.Random, size: int) -> Any:
    """A noisy light-grey square (one grey level per image, per-channel noise per pixel)."""
    from PIL import Image

    grey = rng.randint(170, 230)
    image = Image.new("RGB", (size, size))
    image.putdata(
        [tuple(min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3)) for _ in range(size**2)]
    )
    return image


def draw(rng: random.Random, colour: str, shape: str, size: int) -> Any:
    """One image: the shape in ``colour`` on a noisy light-grey background."""
    from PIL import ImageDraw

    image = _canvas(rng, size)
    extent = rng.randint(size * 3 // 10, size * 6 // 10)
    left, top = rng.randint(0, size - extent), rng.randint(0, size - extent)
    fill = tuple(min(255, max(0, channel + rng.randint(-25, 25))) for channel in COLOURS[colour])
    canvas = ImageDraw.Draw(image)
    box = (left, top, left + extent, top + extent)
    if shape == "circle":
        canvas.ellipse(box, fill=fill)
    elif shape == "square":
        canvas.rectangle(box, fill=fill)
    else:
        canvas.polygon(
            [(left, top + extent), (left + extent, top + extent), (left + extent // 2, top)], fill=fill
        )
    return image


@dataclass
class SyntheticImagePreferences:
    """Generated image preference pairs with train and held-out splits: "what colour is the shape?"
    (``task=colour``) or "is the dot above or below the line?" (``task=spatial``).

    Attributes:
        task: ``colour`` or ``spatial`` (see the module docstring).
        num_train: Training pairs.
        num_eval: Held-out pairs (new images).
        image_size: Side of the square images in pixels.
        seed: Generator seed; same seed, same data.
        rows: ``pairs`` (prompt, chosen, rejected, images) or ``prompts`` (prompt, images and the right
            ``answer``, for online RL with `rlhf_lab.rewards.exact_match`); the same images either way.
    """

    task: str = "colour"
    num_train: int = 1000
    num_eval: int = 256
    image_size: int = 32
    seed: int = 7
    rows: str = "pairs"

    def __post_init__(self) -> None:
        check_choice("data.source.task", self.task, TASKS)
        check_choice("data.source.rows", self.rows, ROW_LAYOUTS)
        check_range("data.source.num_train", self.num_train, 1)
        check_range("data.source.num_eval", self.num_eval, 1)
        check_range("data.source.image_size", self.image_size, 16 if self.task == "spatial" else 8)

    def _colour_row(self, rng: random.Random) -> tuple[str, str, str, Any]:
        colour = rng.choice(sorted(COLOURS))
        other = rng.choice([name for name in sorted(COLOURS) if name != colour])
        shape = rng.choice(SHAPES)
        question = rng.choice(TEMPLATES).format(image=IMAGE_PLACEHOLDER, shape=shape)
        image = draw(rng, colour, shape, self.image_size)
        return question, ANSWER.format(colour=colour), ANSWER.format(colour=other), image

    def _spatial_row(self, rng: random.Random, relation: str) -> tuple[str, str, str, Any]:
        other = RELATIONS[1 - RELATIONS.index(relation)]
        question = rng.choice(SPATIAL_TEMPLATES).format(image=IMAGE_PLACEHOLDER)
        image = draw_spatial(rng, spatial_layout(rng, relation, self.image_size), self.image_size)
        return (
            question,
            SPATIAL_ANSWER.format(relation=relation),
            SPATIAL_ANSWER.format(relation=other),
            image,
        )

    def _rows(self, rng: random.Random, count: int) -> list[dict[str, Any]]:
        if self.task == "spatial":
            # Exactly balanced (one more "above" when odd), in a shuffled order.
            relations = [RELATIONS[i % 2] for i in range(count)]
            rng.shuffle(relations)
            drawn = [self._spatial_row(rng, relation) for relation in relations]
        else:
            drawn = [self._colour_row(rng) for _ in range(count)]
        return [self._layout(*row) for row in drawn]

    def _layout(self, question: str, chosen: str, rejected: str, image: Any) -> dict[str, Any]:
        images = [{"bytes": encode_png(image), "path": None}]
        if self.rows == "prompts":
            return {"prompt": [{"role": "user", "content": question}], "answer": chosen, "images": images}
        return {
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "images": images,
        }

    def load(self) -> Splits:
        """Rows per split (held-out rows first, from the same stream: every image is new)."""
        rng = random.Random(self.seed)
        val = self._rows(rng, self.num_eval)
        train = self._rows(rng, self.num_train)
        return {
            "train": [RowBlock("synthetic_vision[train]", train)],
            "val": [RowBlock("synthetic_vision[val]", val)],
        }
