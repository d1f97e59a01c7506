"""Images in preference rows: where they come from, how they are read, and what identifies them.

A row's images arrive as file paths (relative to the data file's directory, then ``data.image_dir``), as
``http(s)://`` URLs (fetched once and cached) or ``data:`` URIs, as base64 text (ms-swift's), as bytes, as
``{bytes, path}`` dicts (how Hugging Face ``datasets`` stores an ``Image`` feature in Parquet, e.g. RLHF-V), or
as PIL images (a hub dataset with an ``Image`` feature); anything else is an error naming what was expected.
Each becomes an `ImageSource`, read and checked once when the
rows are converted (a missing or unreadable image fails there, naming file, row and field, before any
model loads), and identified by the SHA-256 of its encoded bytes, which keys the reference cache.

In the text an image stands where its ``<image>`` placeholder stands (LLaMA-Factory's and ms-swift's
convention; TRL's ``{"type": "image"}`` content parts are converted to it), and tokenisation replaces each
placeholder with the model's own image tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where an image stands in a prompt's text.
IMAGE_PLACEHOLDER = "<image>"


def count_placeholders(prompt: Any) -> int:
    """``<image>`` placeholders in a prompt (a string, or messages with string contents)."""
    texts = [prompt] if isinstance(prompt, str) else [message.get("content") or "" for message in prompt]
    return sum(text.count(IMAGE_PLACEHOLDER) for text in texts)


class ImageError(ValueError):
    """An image that cannot be used (missing, unreadable, of an unknown kind); the caller adds the location."""


@dataclass(frozen=True)
class ImageSource:
    """One image of a row: encoded bytes or a file, read on demand.

    Attributes:
        path: The image file (absolute, or relative to the working directory), or None for in-memory bytes.
        data: The encoded image (PNG, JPEG...), or None to read ``path``.
        digest: SHA-256 of the encoded bytes (identifies the image in caches).
        size: ``(height, width)`` in pixels (the number of image tokens depends on it).
    """

    path: str | None
    data: bytes | None = field(repr=False)
    digest: str
    size: tuple[int, int]

    def encoded(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return Path(self.path).read_bytes()

    def load(self) -> Any:
        """The image as an RGB PIL image."""
        from PIL import Image

        with Image.open(io.BytesIO(self.encoded())) as image:
            return image.convert("RGB")


def _open(data: bytes, what: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes: a truncated or corrupt file fails here, not mid-training
            width, height = image.size
    except UnidentifiedImageError:
        raise ImageError(f"{what}: not a readable image (no known image format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{what}: not a readable image ({error})") from None
    if not width or not height:
        raise ImageError(f"{what} has no pixels ({width}x{height})")
    return height, width


@dataclass(frozen=True)
class ImageLookup:
    """Where a row's image references point.

    Attributes:
        dirs: Directories a relative path is looked up in, in order (the data file's own, then
            ``data.image_dir``); none: the working directory.
        cache_dir: Where images given as ``http(s)://`` URLs are kept once fetched (one file per URL); None:
            fetched again by every run.
    """

    dirs: tuple[Path, ...] = ()
    cache_dir: Path | None = None


#: Seconds to wait for an image URL before calling it unreachable.
URL_TIMEOUT = 20.0


def _fetch(url: str, cache_dir: Path | None) -> bytes:
    """The bytes at ``url``, from the cache when it was fetched before (keyed by the URL)."""
    import urllib.error
    import urllib.request

    cached = None
    if cache_dir is not None:
        cached = cache_dir / "images" / hashlib.sha256(url.encode()).hexdigest()
        if cached.is_file():
            return cached.read_bytes()
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ImageError(
            f"{url} is a URL and could not be fetched ({reason}); download it and give the file's path, "
            "or run where the network is reachable"
        ) from None
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_name(f".{cached.name}.{os.getpid()}")
        staging.write_bytes(data)
        os.replace(staging, cached)  # whole or absent: a concurrent run never reads half an image
    return data


def _data_uri(value: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URI (ms-swift accepts them in ``images``)."""
    header, _, payload = value.partition(",")
    if not header.endswith(";base64"):
        raise ImageError(
            f"a data URI must be base64-encoded (data:image/...;base64,...), got {header[:40]!r}"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageError(f"a data URI holds invalid base64 ({error})") from None


def _shown(value: str) -> str:
    """A string value as errors show it: the start of a long one (a base64 image is megabytes of text)."""
    return repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value):,} characters)"


def _resolve(path: str, lookup: ImageLookup) -> Path | None:
    """A relative path looked up in each of ``lookup.dirs`` (the first that has it), else as given; None when no
    such file exists (a name too long for the file system, or with a NUL, is no file either)."""
    candidate = Path(path)
    tried = (
        [candidate] if candidate.is_absolute() or not lookup.dirs else [d / candidate for d in lookup.dirs]
    )
    for resolved in tried:
        try:
            if resolved.is_file():
                return resolved
        except (OSError, ValueError):
            continue
    return None


#: A string longer than this that names no file is read as base64 image data (ms-swift's rule: a path is
#: shorter); a shorter one is an image when it decodes to one, else a missing file.
BASE64_MIN_LENGTH = 200


def _base64(text: str, what: str) -> bytes:
    try:
        # Line breaks are how base64 tools wrap their output; anything else outside the alphabet is refused.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageError(f"{what} is not valid base64 ({error})") from None


def _from_text(text: str, lookup: ImageLookup) -> tuple[str | None, bytes, str]:
    """The file (None: none), bytes and description (for errors) of an image given as text: a URL, a ``data:``
    URI, a path, or base64 image data."""
    text = text.strip()
    if not text:
        raise ImageError("empty image path")
    if text.startswith(("http://", "https://")):
        return None, _fetch(text, lookup.cache_dir), f"the image at {text}"
    if text.startswith("data:"):
        return None, _data_uri(text), "the image bytes"
    resolved = _resolve(text, lookup)
    if resolved is not None:
        try:
            return str(resolved), resolved.read_bytes(), f"image file {resolved}"
        except OSError as error:
            raise ImageError(f"cannot read the image file {resolved}: {error}") from None
    described = f"the image text {_shown(text)} (no such file, so read as base64)"
    if len(text) > BASE64_MIN_LENGTH:
        return None, _base64(text, described), described
    try:  # a short base64 image (ms-swift reads these as paths, and they fail there)
        data = _base64(text, described)
        _open(data, described)
        return None, data, described
    except ImageError:
        pass
    where = f" (looked in: {', '.join(str(d) for d in lookup.dirs)})" if lookup.dirs else ""
    shown = text if text.isprintable() and len(text) <= 80 else _shown(text)
    raise ImageError(f"image file not found: {shown}{where}")


def _from_object(value: dict, lookup: ImageLookup) -> tuple[str | None, bytes, str]:
    """A ``{"bytes": ..., "path": ...}`` object (bytes win when both are set; base64 text counts as bytes)."""
    unknown = set(value) - {"bytes", "path"}
    if unknown:
        raise ImageError(
            f"an image object has keys {sorted(map(str, value))}; expected 'bytes' and/or 'path'"
        )
    data, path = value.get("bytes"), value.get("path")
    if data is not None and not isinstance(data, bytes | bytearray | str):
        raise ImageError(
            f"an image object's 'bytes' must be bytes (or base64 text), got {type(data).__name__}"
        )
    if path is not None and not isinstance(path, str):
        raise ImageError(f"an image object's 'path' must be a string, got {type(path).__name__}")
    if isinstance(data, str):
        if not data.strip():
            data = None
        else:
            return None, _base64(data.strip(), "an image object's 'bytes' text"), "the image bytes"
    if data is not None:
        return None, bytes(data), "the image bytes"
    if not path:
        raise ImageError("an image object has neither 'bytes' nor 'path'")
    return _from_text(path, lookup)


def image_source(value: Any, lookup: ImageLookup | None = None) -> ImageSource:
    """Read and check one image value of a row.

    Args:
        value: A path string, an ``http(s)://`` URL, a ``data:`` URI, base64 image data as text (a string
            longer than `BASE64_MIN_LENGTH` that names no file, as ms-swift reads it), bytes, a
            ``{"bytes": ..., "path": ...}`` dict (bytes win when both are set; ``bytes`` may be base64 text, as
            JSON cannot hold bytes), or a PIL image.
        lookup: Where relative paths are looked up and fetched URLs cached (None: the working directory, no
            cache).

    Raises:
        ImageError: The value is of no known kind, the file is missing, the URL unreachable, or it is not a
            readable image.
    """
    lookup = lookup or ImageLookup()
    path: str | None = None
    what = "the image bytes"
    if isinstance(value, dict):
        path, data, what = _from_object(value, lookup)
    elif isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str):
        path, data, what = _from_text(value, lookup)
    elif hasattr(value, "save") and hasattr(value, "size") and not isinstance(value, type):
        # A PIL image (hub datasets decode Image features).
        buffer = io.BytesIO()
        try:
            value.save(buffer, format="PNG")
        except Exception as error:  # not a PIL image after all: name it rather than fail inside it
            raise ImageError(f"cannot encode the {type(value).__name__} as an image ({error})") from None
        data = buffer.getvalue()
    else:
        raise ImageError(
            "expected an image as a path, URL, bytes, base64 text, a data URI or a {bytes, path} object, got "
            f"{'null' if value is None else type(value).__name__}"
        )
    size = _open(data, what)
    # A file is read again when the image is needed (its bytes are not kept in memory).
    return ImageSource(path, None if path is not None else data, hashlib.sha256(data).hexdigest(), size)


def blank_like(image: ImageSource) -> ImageSource:
    """A uniform grey image of the same size (an ablation: the same tokens, no visual information)."""
    from PIL import Image

    height, width = image.size
    data = encode_png(Image.new("RGB", (width, height), (128, 128, 128)))
    return ImageSource(None, data, hashlib.sha256(data).hexdigest(), image.size)


def encode_png(image: Any) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


_MARKS = ("\u2402", "\u2403")  # unlikely characters around the probe image, to cut its rendering out


class ImageProcessing:
    """How a vision-language model's processor turns images into tokens and pixels.

    Args:
        processor: The model's processor (``image_processor``, ``tokenizer``, ``image_token``).

    Attributes:
        image_token: The token repeated once per image feature (``<|image_pad|>``, ``<image>``).
        image_text: How the model's chat template renders one image (``<|vision_start|><|image_pad|>
            <|vision_end|>`` for Qwen2-VL), holding ``image_token`` once; each ``<image>`` placeholder becomes
            this text with ``image_token`` repeated as many times as the image has features.
        image_token_ids: Ids of every token of ``image_text`` (truncation never removes one).
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.image_text = self._template_image_text()
        ids = self.tokenizer(self.image_text, add_special_tokens=False)["input_ids"]
        self.image_token_ids = frozenset(ids) | {self.tokenizer.convert_tokens_to_ids(self.image_token)}

    def _template_image_text(self) -> str:
        """One image as the chat template renders it (falls back to the bare image token)."""
        parts = [
            {"type": "text", "text": _MARKS[0]},
            {"type": "image"},
            {"type": "text", "text": _MARKS[1]},
        ]
        try:
            text = self.processor.apply_chat_template([{"role": "user", "content": parts}], tokenize=False)
            start, end = text.index(_MARKS[0]) + 1, text.index(_MARKS[1])
            rendered = text[start:end]
        except Exception:  # no template, or one without content parts
            return self.image_token
        return rendered if rendered.count(self.image_token) == 1 else self.image_token

    def readable(self, text: str) -> str:
        """Decoded text with each image's tokens shown as one ``<image>`` placeholder."""
        import re

        collapsed = re.sub(f"(?:{re.escape(self.image_token)})+", lambda _: self.image_token, text)
        return collapsed.replace(self.image_text, IMAGE_PLACEHOLDER)

    def num_tokens(self, image: ImageSource) -> int:
        """Image tokens the model spends on ``image`` (depends on its size for dynamic-resolution models)."""
        data = self.processor._get_num_multimodal_tokens(image_sizes=[list(image.size)])
        return int(data.num_image_tokens[0])

    def expansion(self, image: ImageSource) -> str:
        """The text that stands for ``image`` in a rendered prompt."""
        return self.image_text.replace(self.image_token, self.image_token * self.num_tokens(image))

    def pixels(self, images: list[ImageSource]) -> tuple[Any, Any, dict[str, Any]]:
        """Process each image once: ``(pixel_values, rows of pixel_values per image, other per-image tensors)``.

        Images are processed one at a time and concatenated along the first dimension, so an image's
        pixels never depend on which images share its batch; a per-image dimension that differs between
        images (LLaVA-NeXT's tile count) is zero-padded, as its processor pads a batch.
        """
        import torch

        outputs = [
            self.processor.image_processor(images=[image.load()], return_tensors="pt") for image in images
        ]
        pixel_values = [output["pixel_values"] for output in outputs]
        rows = torch.tensor([values.shape[0] for values in pixel_values], dtype=torch.long)
        extra = {
            key: torch.cat([torch.as_tensor(output[key]) for output in outputs])
            for key in outputs[0]
            if key != "pixel_values"
        }
        return _cat_padded(pixel_values), rows, extra


def _cat_padded(tensors: list[Any]) -> Any:
    import torch

    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    padded = []
    for tensor in tensors:
        pad: list[int] = []
        for dim in reversed(range(1, tensor.dim())):
            pad += [0, shape[dim] - tensor.shape[dim]]
        padded.append(torch.nn.functional.pad(tensor, pad) if any(pad) else tensor)
    return torch.cat(padded)
