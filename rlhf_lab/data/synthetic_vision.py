"""A bundled image preference task that can only be solved by looking at the image.

Each image is a noisy light-grey canvas with one shape (circle, square or triangle; random size and place)
painted in one of six colours, with per-image jitter. The prompt asks for the colour of the shape; the
chosen answer names the true colour and the rejected one another colour drawn uniformly. The text of a
prompt says nothing about the colour (the templates, and the shape they may name, are drawn independently
of it) and every colour is chosen and rejected equally often, so a model that ignores the image stays at
chance (0.5) on held-out pairs, and so does the same run with ``data.blank_images=true``.

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


def draw(rng: random.Random, colour: str, shape: str, size: int) -> Any:
    """One image: the shape in ``colour`` on a noisy light-grey background."""
    from PIL import Image, ImageDraw

    grey = rng.randint(170, 230)
    image = Image.new("RGB", (size, size))
    image.putdata(
        [tuple(min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3)) for _ in range(size**2)]
    )
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
    """Generated image preference pairs ("what colour is the shape?") with train and held-out splits.

    Attributes:
        num_train: Training pairs.
        num_eval: Held-out pairs (new images).
        image_size: Side of the square images in pixels.
        seed: Generator seed; same seed, same data.
        rows: ``pairs`` (prompt, chosen, rejected, images) or ``prompts`` (prompt, images and the right
            ``answer``, for online RL with `rlhf_lab.rewards.exact_match`); the same images either way.
    """

    num_train: int = 1000
    num_eval: int = 256
    image_size: int = 32
    seed: int = 7
    rows: str = "pairs"

    def __post_init__(self) -> None:
        check_choice("data.source.rows", self.rows, ROW_LAYOUTS)
        check_range("data.source.num_train", self.num_train, 1)
        check_range("data.source.num_eval", self.num_eval, 1)
        check_range("data.source.image_size", self.image_size, 8)

    def _row(self, rng: random.Random) -> dict[str, Any]:
        colour = rng.choice(sorted(COLOURS))
        other = rng.choice([name for name in sorted(COLOURS) if name != colour])
        shape = rng.choice(SHAPES)
        question = rng.choice(TEMPLATES).format(image=IMAGE_PLACEHOLDER, shape=shape)
        image = draw(rng, colour, shape, self.image_size)
        images = [{"bytes": encode_png(image), "path": None}]
        if self.rows == "prompts":
            return {
                "prompt": [{"role": "user", "content": question}],
                "answer": ANSWER.format(colour=colour),
                "images": images,
            }
        return {
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": ANSWER.format(colour=colour)}],
            "rejected": [{"role": "assistant", "content": ANSWER.format(colour=other)}],
            "images": images,
        }

    def load(self) -> Splits:
        """Rows per split (held-out rows first, from the same stream: every image is new)."""
        rng = random.Random(self.seed)
        val = [self._row(rng) for _ in range(self.num_eval)]
        train = [self._row(rng) for _ in range(self.num_train)]
        return {
            "train": [RowBlock("synthetic_vision[train]", train)],
            "val": [RowBlock("synthetic_vision[val]", val)],
        }
