"""`python -m rlhf_lab.chat <run dir or export dir> [--prompt TEXT] [--image PATH] ...`: talk to an export.

Loads ``<dir>/export`` (or ``<dir>`` itself when it is an export: merged weights, or a peft adapter whose
base model is named in its ``adapter_config.json``) and answers with the model's chat template. Without
``--prompt`` it reads one user turn per line from stdin and keeps the conversation (``/reset`` forgets
it, ``/exit`` or end of input quits); with it, it prints one reply and exits. A vision-language export
takes ``--image PATH`` (attached to the first turn). Options are ``--key value``, ``--key=value`` or
``key=value``, like the other commands: ``prompt``, ``image``, ``system``, ``max_new_tokens`` (128),
``temperature`` (0: greedy), ``top_p`` (1.0), ``seed`` (0).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.errors import ConfigError, check_range

USAGE = (
    "usage: python -m rlhf_lab.chat <run dir or export dir> [--prompt TEXT] [--image PATH] [--system TEXT]\n"
    "       [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]   (or key=value)"
)
#: Another name a key is given by (``run_dir=`` as `rlhf_lab.evaluate` takes it).
_ALIASES = {"run_dir": "path", "export": "path", "dir": "path"}


@dataclass
class ChatOptions:
    """What to load and how to generate.

    Attributes:
        path: A run directory (its ``export/`` is loaded) or an export directory.
        prompt: One user message: reply once and exit (None: interactive).
        image: An image for a vision-language model, shown with the first user message.
        system: A system message before the conversation.
        max_new_tokens: Longest reply.
        temperature: Sampling temperature; 0 decodes greedily.
        top_p: Nucleus sampling (with a temperature above 0).
        seed: Seeds sampling.
    """

    path: str = ""
    prompt: str | None = None
    image: str | None = None
    system: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)


def _convert(key: str, text: str) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(ChatOptions)}[key]
    try:
        return int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a{'n int' if kind == 'int' else ' number'}") from None


def parse_args(argv: list[str]) -> ChatOptions:
    """``ChatOptions`` from ``--key value``, ``--key=value`` or ``key=value`` arguments and one path.

    Raises:
        ConfigError: An unknown key, a missing value or path, or a value of the wrong type.
    """
    names = {f.name for f in dataclasses.fields(ChatOptions)}
    values: dict[str, Any] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--"):
            key, has_value, value = arg[2:].partition("=")
            if not has_value:
                if not args:
                    raise ConfigError(f"{arg} needs a value\n{USAGE}")
                value = args.pop(0)
        elif "=" in arg and arg.split("=", 1)[0].replace("-", "_") in names | set(_ALIASES):
            key, _, value = arg.partition("=")
        elif "path" not in values:
            key, value = "path", arg
        else:
            raise ConfigError(f"unexpected argument {arg!r} (the directory is {values['path']!r})\n{USAGE}")
        key = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if key not in names:
            raise ConfigError(f"unknown option {key!r}; options: {', '.join(sorted(names - {'path'}))}")
        values[key] = _convert(key, value)
    if not values.get("path"):
        raise ConfigError(f"name a run directory or an export directory\n{USAGE}")
    return ChatOptions(**values)


def _is_export(directory: Path) -> bool:
    return (directory / "config.json").is_file() or (directory / "adapter_config.json").is_file()


def find_export(path: str) -> Path:
    """The export to load: ``<path>/export`` of a run directory, or ``path`` when it is an export.

    Raises:
        ConfigError: ``path`` does not exist, or holds neither an export nor a run's ``export/``.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{path}: no such directory (give a run directory or its export/)")
    for candidate in (root / "export", root):
        if _is_export(candidate):
            return candidate
    raise ConfigError(
        f"{path}: not an export (no config.json or adapter_config.json) and no export/ in it; was the run "
        "trained with export.enabled=true, and did it finish?"
    )


@dataclass
class Chatbot:
    """A loaded export: the model, its tokenizer, and a vision-language model's processor (else None)."""

    model: Any
    tokenizer: Any
    processor: Any = None


def load(export: Path) -> Chatbot:
    """Load an export (merged weights, or a peft adapter on the base model its config names)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    adapter_file = export / "adapter_config.json"
    base = json.loads(adapter_file.read_text())["base_model_name_or_path"] if adapter_file.is_file() else None
    try:
        vision = getattr(AutoConfig.from_pretrained(base or export), "vision_config", None) is not None
        auto_class: Any = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model: Any = auto_class.from_pretrained(base or export)
    except OSError as error:
        what = f"the adapter's base model {base}" if base else str(export)
        raise ConfigError(f"cannot load {what}: {str(error).strip().splitlines()[0]}") from error
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, export)
    processor = None
    if vision:
        from rlhf_lab.models.vision import load_processor

        processor = load_processor(str(export))
    tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(export)
    return Chatbot(model.eval(), tokenizer, processor)


def encode(bot: Chatbot, messages: list[dict[str, Any]], images: list[Any]) -> dict[str, Any]:
    """The conversation as the model's inputs: its chat template with the assistant's turn opened (the
    texts joined by newlines for a model without one), and the images' pixels for a vision-language model."""
    renderer = bot.processor if bot.processor is not None else bot.tokenizer
    if getattr(renderer, "chat_template", None):
        text = renderer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        special = False  # the template writes BOS itself
    else:
        text = "\n".join(_text(message["content"]) for message in messages)
        special = True
    if bot.processor is None:
        return dict(bot.tokenizer(text, add_special_tokens=special, return_tensors="pt"))
    inputs = dict(
        bot.processor(text=[text], images=images or None, add_special_tokens=special, return_tensors="pt")
    )
    image_token_id = getattr(bot.model.config, "image_token_id", None)
    if "image_grid_thw" in inputs and image_token_id is not None:
        # Qwen2-VL's multimodal rotary positions locate the image tokens by this mask.
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_token_id).int()
    return inputs


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def reply(bot: Chatbot, messages: list[dict[str, Any]], images: list[Any], options: ChatOptions) -> str:
    """The model's next assistant message (greedy at temperature 0, else sampled with ``options.seed``)."""
    import torch

    inputs = encode(bot, messages, images)
    device = next(bot.model.parameters()).device
    inputs = {key: value.to(device) if hasattr(value, "to") else value for key, value in inputs.items()}
    sampling: dict[str, Any] = {"do_sample": options.temperature > 0}
    if options.temperature > 0:
        sampling.update(temperature=options.temperature, top_p=options.top_p, top_k=0)
    tokenizer = bot.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(options.seed)
    with torch.no_grad():
        output = bot.model.generate(
            **inputs, max_new_tokens=options.max_new_tokens, pad_token_id=pad, **sampling
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def user_message(bot: Chatbot, text: str, with_image: bool) -> dict[str, Any]:
    """A user turn; a vision-language model's as content parts (an image part first on the image's turn)."""
    if bot.processor is None:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def load_image(path: str | None, bot: Chatbot) -> list[Any]:
    """``[the image]`` (RGB), or ``[]``.

    Raises:
        ConfigError: An image for a text model, or an unreadable image file.
    """
    if path is None:
        return []
    if bot.processor is None:
        raise ConfigError(f"image={path}: this export is a text model; it cannot take images")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return [image.convert("RGB")]
    except (OSError, UnidentifiedImageError) as error:
        raise ConfigError(f"image={path}: cannot read it as an image ({error})") from error


def chat(options: ChatOptions, lines: Any = None, out: Any = None) -> None:
    """One reply to ``options.prompt``, or a conversation read from ``lines`` (stdin), printed to ``out``."""
    out = out or sys.stdout
    export = find_export(options.path)
    bot = load(export)
    images = load_image(options.image, bot)
    start = [{"role": "system", "content": options.system}] if options.system else []
    if options.prompt is not None:
        messages = [*start, user_message(bot, options.prompt, bool(images))]
        print(reply(bot, messages, images, options), file=out, flush=True)
        return
    interactive = lines is None and sys.stdin.isatty()
    if interactive:
        print(
            f"chatting with {export} (/reset forgets the conversation, /exit or Ctrl-D quits)",
            file=sys.stderr,
        )
    messages = list(start)
    for line in lines if lines is not None else sys.stdin:
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(start)
            continue
        if text:
            first = not any(m["role"] == "user" for m in messages)
            messages.append(user_message(bot, text, bool(images) and first))
            answer = reply(bot, messages, images if any_image(messages) else [], options)
            messages.append({"role": "assistant", "content": answer})
            print(answer, file=out, flush=True)


def any_image(messages: list[dict[str, Any]]) -> bool:
    """Whether the conversation shows an image (forgotten after ``/reset``)."""
    return any(
        isinstance(m["content"], list) and any(p.get("type") == "image" for p in m["content"])
        for m in messages
    )


def main(argv: list[str] | None = None) -> None:
    """The ``rlhf-lab-chat`` command."""
    arguments = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(arguments):
        print(__doc__.split("\n\n", 1)[1].strip() + "\n\n" + USAGE)
        return
    try:
        # Checked before anything heavy is imported (`reported_errors` imports the data layer, Lightning):
        # a wrong argument or directory is reported at once.
        options = parse_args(arguments)
        find_export(options.path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    from rlhf_lab.cli import quiet_libraries, reported_errors

    with reported_errors():
        quiet_libraries()
        chat(options)


if __name__ == "__main__":
    main()
