"""Vision-language preference data and models: formats, image tokens, collation, the multimodal forward."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.formats import DataError, convert_rows
from rlhf_lab.data.images import IMAGE_PLACEHOLDER, ImageProcessing, encode_png, image_source
from rlhf_lab.data.io import read_rows
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_example, tokenize_examples
from rlhf_lab.errors import ConfigError
from rlhf_lab.logprobs import naive_completion_logps
from rlhf_lab.models.tiny_vlm import TinyVisionLanguageModel
from rlhf_lab.policy import Policy

ARCHITECTURES = ("qwen2_vl", "llava", "llava_next")
CORPUS = ["What colour is the shape?", "It is red.", "It is blue.", "Tell me the colour of the square."] * 8


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    return encode_png(Image.new("RGB", size, colour))


def pair(images: list[Any], question: str = "<image>What colour is the shape?", **extra: Any) -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": "It is red."}],
        "rejected": [{"role": "assistant", "content": "It is blue."}],
        "images": images,
        **extra,
    }


@pytest.fixture(scope="module", params=ARCHITECTURES)
def vlm(request: pytest.FixtureRequest) -> TinyVisionLanguageModel:
    # Patch 4 (16 image tokens with Qwen2-VL, not the default's 1): the token-level checks see many image tokens.
    # At the default patch 16, test_greedy_generation_with_images_equals_transformers_generate[qwen2_vl] fails
    # (its second, left-padded prompt's first greedy token: 12 in rlhf_lab, 10 in transformers' generate).
    # Frozen vision parts (the tiny VLM trains them by default): the gradient checks cover the language model.
    spec = TinyVisionLanguageModel(
        architecture=request.param,
        patch_size=4,
        freeze_vision_tower=True,
        freeze_projector=True,
        cache_dir=os.environ["RLHF_LAB_CACHE"],
    )
    spec.prepare(lambda: CORPUS)
    return spec


@pytest.fixture(scope="module")
def processing(vlm: TinyVisionLanguageModel) -> ImageProcessing:
    processor = vlm.load_processor()
    processor.tokenizer = vlm.load_tokenizer()
    return ImageProcessing(processor)


# ------------------------------------------------------------------------------------------ formats
def test_sharegpt_rows_with_image_paths_relative_to_the_data_file(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png((255, 0, 0), (20, 30)))
    path = tmp_path / "data.jsonl"
    row = {
        "conversations": [{"from": "human", "value": "<image>What colour?"}],
        "chosen": {"from": "gpt", "value": "Red."},
        "rejected": {"from": "gpt", "value": "Blue."},
        "images": ["img/a.png"],
    }
    path.write_text(json.dumps(row) + "\n")
    (example,), _ = convert_rows(read_rows(path), file=str(path))
    assert example.prompt == [{"role": "user", "content": "<image>What colour?"}]
    assert example.chosen == [{"role": "assistant", "content": "Red."}]
    (image,) = example.images
    assert image.path == str(tmp_path / "img" / "a.png")
    assert image.size == (30, 20)  # (height, width)
    assert image.load().getpixel((0, 0)) == (255, 0, 0)
    assert example.rejected_images is None


def test_parquet_rows_with_image_bytes_as_datasets_stores_them(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = png((0, 255, 0))
    table = pa.table(
        {
            "conversations": [[{"from": "human", "value": "Describe <image> please"}]],
            "chosen": [{"from": "gpt", "value": "Green."}],
            "rejected": [{"from": "gpt", "value": "Red."}],
            "images": [[{"bytes": data, "path": "ignored-when-bytes.png"}]],
        }
    )
    path = tmp_path / "rlhf_v.parquet"
    pq.write_table(table, path)
    (example,), _ = convert_rows(read_rows(path), file=str(path))
    (image,) = example.images
    assert image.path is None and image.encoded() == data
    assert example.prompt[0]["content"] == "Describe <image> please"


def test_a_hub_dataset_with_an_image_feature_gives_its_stored_bytes(tmp_path: Path) -> None:
    """RLHF-V on the hub: sharegpt rows whose ``images`` is a list of Image features in Parquet."""
    import datasets

    from rlhf_lab.data.sources import HubDataset

    text = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    features = datasets.Features(
        {
            "conversations": datasets.List(text),
            "chosen": text,
            "rejected": text,
            "images": datasets.List(datasets.Image()),
        }
    )
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    table = datasets.Dataset.from_dict(
        {
            "conversations": [[{"from": "human", "value": "<image>Colour?"}]] * 4,
            "chosen": [{"from": "gpt", "value": "Red."}] * 4,
            "rejected": [{"from": "gpt", "value": "Blue."}] * 4,
            "images": [[Image.new("RGB", (16, 16), colour)] for colour in colours],
        },
        features=features,
    )
    (tmp_path / "data").mkdir()
    table.to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    splits = HubDataset(name=str(tmp_path), eval_split=None, eval_fraction=0.25).load()
    (block,) = splits["train"]
    examples, _ = convert_rows(block.rows, "sharegpt", file=block.name, row_numbers=block.row_numbers)
    stored = {example.images[0].load().getpixel((0, 0)) for example in examples}
    assert stored <= set(colours) and len(stored) == 3
    assert all(example.images[0].encoded().startswith(b"\x89PNG") for example in examples)


def test_swift_rows_with_rejected_images_are_image_level_pairs(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image>Is this red?"},
                {"role": "assistant", "content": "Yes."},
            ],
            "rejected_response": "Yes.",  # the same words: the pair differs by its images alone
            "images": [{"bytes": png((255, 0, 0))}],
            "rejected_images": [{"bytes": png((0, 0, 255))}],
        },
        {
            "query": "<image>Colour?",
            "response": "Red.",
            "rejected_response": "Blue.",
            "images": [png((255, 0, 0))],
        },
    ]
    examples, stats = convert_rows(rows, file="swift.jsonl")
    assert stats["identical_dropped"] == 0  # same text, different images: something to prefer
    first, second = examples
    assert first.chosen == first.rejected == [{"role": "assistant", "content": "Yes."}]
    assert first.images[0].digest != first.rejected_images[0].digest
    assert second.prompt == [{"role": "user", "content": "<image>Colour?"}]
    assert second.rejected_images is None


def test_trl_content_parts_and_single_image_column() -> None:
    row = {
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
        "rejected": [{"role": "assistant", "content": "Blue."}],
        "image": {"bytes": png((255, 0, 0)), "path": None},
    }
    (example,), _ = convert_rows([row], file="trl.jsonl")
    assert example.prompt == [{"role": "user", "content": "<image>What colour is it?"}]
    assert example.chosen == [{"role": "assistant", "content": "Red."}]
    assert len(example.images) == 1


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"images": ["missing.png"]}, "images[0]", "image file not found"),
        ({"images": [{"bytes": b"not an image"}]}, "images[0]", "not a readable image"),
        ({"images": [{"bytes": png((1, 2, 3))[:40]}]}, "images[0]", "not a readable image"),
        ({"images": [png((1, 2, 3)), png((3, 2, 1))]}, "images", "2 image(s) but 1 <image> placeholder"),
        ({"rejected_images": [png((1, 2, 3))] * 2}, "rejected_images", "2 image(s) but 1 <image>"),
        ({"images": [7]}, "images[0]", "expected an image as a path, URL, bytes"),
        ({"images": [{"url": "x"}]}, "images[0]", "expected 'bytes' and/or 'path'"),
    ],
)
def test_bad_images_fail_naming_file_row_and_field(
    tmp_path: Path, change: dict, field: str, message: str
) -> None:
    path = tmp_path / "data.jsonl"
    good = pair([{"bytes": png((255, 0, 0))}])
    bad = {**good, **change}
    rows = [good, bad]
    with pytest.raises(DataError) as raised:
        convert_rows(rows, file=str(path))
    assert (raised.value.row, raised.value.field) == (1, field)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


def test_placeholder_in_a_completion_is_refused() -> None:
    row = pair([png((255, 0, 0))])
    row["chosen"] = [{"role": "assistant", "content": "It is <image> red."}]
    with pytest.raises(DataError, match="images may only appear in the prompt"):
        convert_rows([row], file="d.jsonl")


def test_a_missing_image_fails_before_any_model_loads(
    tmp_path: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlhf_lab.train import build

    def no_model(*_: Any) -> None:
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(TinyVisionLanguageModel, "_build", no_model)
    (tmp_path / "a.png").write_bytes(png((255, 0, 0)))
    path = tmp_path / "data.jsonl"
    rows = [pair(["a.png"]) for _ in range(4)]
    rows[2]["images"] = ["gone.png"]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    cfg = make_config(
        "model=tiny_vlm",
        "data=jsonl",
        f"data.source.train_path={path}",
        "data.source.eval_fraction=0.25",
        tiny=False,
    )
    with pytest.raises(DataError, match=r"data.jsonl, row 2, field 'images\[0\]': image file not found"):
        build(cfg)


# ------------------------------------------------------------------------------------- tokenisation
def test_image_tokens_are_the_processors_own(processing: ImageProcessing) -> None:
    """Each placeholder becomes the template's image text with one image token per feature: the ids equal the
    processor's own encoding of the rendered prompt with that image."""
    image = image_source({"bytes": png((200, 10, 10), (40, 24))}, None)
    (example,), _ = convert_rows([pair([{"bytes": png((200, 10, 10), (40, 24))}])], file="d.jsonl")
    tokenized = tokenize_example(example, processing.tokenizer, TokenizeSettings(None, None), processing)
    assert tokenized is not None
    image_id = processing.tokenizer.convert_tokens_to_ids(processing.image_token)
    assert tokenized.prompt_ids.count(image_id) == processing.num_tokens(image)
    assert image_id not in tokenized.chosen_ids + tokenized.rejected_ids
    processor = processing.processor
    text = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}],
            }
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    expected = processor(text=[text], images=[image.load()], return_tensors="pt")["input_ids"][0].tolist()
    # The processor's tokenizer may add a BOS the template already wrote; compare from the template's own.
    assert tokenized.prompt_ids == expected[-len(tokenized.prompt_ids) :]
    assert (
        processing.readable(processing.tokenizer.decode(tokenized.prompt_ids)).count(IMAGE_PLACEHOLDER) == 1
    )


def test_placeholders_without_images_and_images_for_a_text_model_fail(processing: ImageProcessing) -> None:
    (example,), _ = convert_rows([pair([png((1, 2, 3))])], file="d.jsonl")
    text_only = convert_rows([{**pair([]), "images": None}], file="d.jsonl")[0][0]
    with pytest.raises(DataError, match="1 <image> placeholder"):
        tokenize_example(text_only, processing.tokenizer, TokenizeSettings(), processing)
    with pytest.raises(ConfigError, match="this row has images but the model is a text model"):
        tokenize_example(example, processing.tokenizer, TokenizeSettings(), None)


def test_the_data_spelling_an_image_token_is_refused(processing: ImageProcessing) -> None:
    spelled = processing.image_token if processing.image_token != IMAGE_PLACEHOLDER else "<|image_pad|>"
    if spelled not in processing.tokenizer.get_vocab():
        pytest.skip("this model's image token is the placeholder itself")
    (example,), _ = convert_rows([pair([png((1, 2, 3))], f"<image>What is {spelled}?")], file="d.jsonl")
    with pytest.raises(DataError, match="spells the model's image token"):
        tokenize_example(example, processing.tokenizer, TokenizeSettings(), processing)


def test_truncation_never_cuts_image_tokens(processing: ImageProcessing) -> None:
    """keep_end may drop text before the image, never the image: an example that cannot fit otherwise is
    dropped and counted with the other too-long examples."""
    words = " ".join(["colour"] * 30)
    rows = [
        pair([png((255, 0, 0))], f"{words} <image>What colour?"),
        pair([png((255, 0, 0))], f"<image>{words}"),
    ]
    examples, _ = convert_rows(rows, file="d.jsonl")
    image_id = processing.tokenizer.convert_tokens_to_ids(processing.image_token)
    full = [
        tokenize_example(e, processing.tokenizer, TokenizeSettings(None, None), processing) for e in examples
    ]
    after_image = len(full[0].prompt_ids) - max(
        i for i, t in enumerate(full[0].prompt_ids) if t in processing.image_token_ids
    )
    limit = len(full[1].prompt_ids) - 5  # both prompts are longer than this
    assert limit > after_image + processing.num_tokens(examples[0].images[0]) + 2
    settings = TokenizeSettings(max_length=None, max_prompt_length=limit, truncation_mode="keep_end")
    kept, stats = tokenize_examples(examples, processing.tokenizer, settings, processing)
    assert stats["dropped_too_long"] == 1 and len(kept) == 1  # the second would lose its image's start
    (first,) = kept
    assert first.truncated and len(first.prompt_ids) == limit
    assert first.prompt_ids.count(image_id) == full[0].prompt_ids.count(image_id)
    assert first.prompt_ids == full[0].prompt_ids[-limit:]
    start_kept = tokenize_examples(
        examples[1:], processing.tokenizer, TokenizeSettings(None, limit, "keep_start"), processing
    )
    assert start_kept[1]["dropped_too_long"] == 0  # keep_start cuts the text after the image


# ---------------------------------------------------------------------------------------- collation
def test_a_pair_encodes_its_images_once(processing: ImageProcessing) -> None:
    red, blue = png((255, 0, 0)), png((0, 0, 255), (40, 24))
    rows = [pair([{"bytes": red}]), pair([{"bytes": blue}]), pair([{"bytes": red}])]
    rows.append(pair([{"bytes": blue}], rejected_images=[{"bytes": png((0, 255, 0))}]))
    rows[3]["rejected"] = rows[3]["chosen"]
    examples, _ = convert_rows(rows, file="d.jsonl")
    tokenized, _ = tokenize_examples(examples, processing.tokenizer, TokenizeSettings(None, None), processing)
    batch = PreferenceCollator(pad_token_id=processing.tokenizer.pad_token_id, images=processing)(
        list(enumerate(tokenized))
    )
    images = batch.sequences.images
    assert images is not None
    # Three distinct images (red, blue, and the green rejected image), in the order rows show them.
    assert images.pixel_rows.numel() == 3
    assert images.shown.tolist() == [0, 1, 0, 1, 0, 1, 0, 2]
    assert images.row_counts.tolist() == [1] * 8
    # The image-level pair's rejected row has its own prompt, showing the green image.
    image_id = processing.tokenizer.convert_tokens_to_ids(processing.image_token)
    assert (batch.sequences.input_ids == image_id).sum(1).tolist() == [
        processing.num_tokens(e.images[0]) for e in examples
    ] + [processing.num_tokens(e.rejected_images[0] if e.rejected_images else e.images[0]) for e in examples]
    rejected = batch.rejected().images
    assert rejected.pixel_rows.numel() == 3 and rejected.shown.tolist() == [0, 1, 0, 2]


# ----------------------------------------------------------------------------------------- forward
def _hf_row_logps(
    model: Any, processing: ImageProcessing, ids: list[int], prompt: int, images: list[Any]
) -> torch.Tensor:
    """One row alone through the model's own forward (its own image handling and positions)."""
    input_ids = torch.tensor([ids])
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    pixels = processing.processor.image_processor(images=[i.load() for i in images], return_tensors="pt")
    inputs.update(pixels)
    if "image_grid_thw" in pixels:
        inputs["mm_token_type_ids"] = (input_ids == model.config.image_token_id).int()
    logits = model(**inputs).logits
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    mask[0, prompt:] = True
    return naive_completion_logps(logits, input_ids, mask)[0]


def test_batched_pair_logps_equal_each_row_through_the_models_own_forward(
    vlm: TinyVisionLanguageModel, processing: ImageProcessing
) -> None:
    """Chosen + rejected rows, padded to one batch, with the vision tower run once per distinct image and
    multimodal positions computed for the whole batch, give each row's log-probs (and gradients) as the
    model's own forward does on that row alone."""
    rows = [
        pair([{"bytes": png((255, 0, 0))}]),
        pair([{"bytes": png((0, 0, 255), (40, 24))}], "Look: <image>What colour is the big shape here?"),
    ]
    rows[1]["rejected"] = [{"role": "assistant", "content": "It is a rather long and wrong answer."}]
    examples, _ = convert_rows(rows, file="d.jsonl")
    tokenized, _ = tokenize_examples(examples, processing.tokenizer, TokenizeSettings(None, None), processing)
    batch = PreferenceCollator(pad_token_id=processing.tokenizer.pad_token_id, images=processing)(
        list(enumerate(tokenized))
    )
    torch.manual_seed(0)
    model = vlm.load_model()
    with torch.no_grad():  # away from the initial weights, so the vision features matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    policy = Policy(model).eval()
    encoded = []
    base = model.model
    original = base.get_image_features
    base.get_image_features = lambda *a, **k: encoded.append(k["pixel_values"].shape[0]) or original(*a, **k)
    batched = policy(batch.sequences).logps
    base.get_image_features = original
    assert len(encoded) == 1 and encoded[0] == int(batch.sequences.images.pixel_values.shape[0])
    expected = []
    for row, (example, example_images) in enumerate(
        [(t, t.images) for t in tokenized] + [(t, t.images) for t in tokenized]
    ):
        completion = example.chosen_ids if row < len(tokenized) else example.rejected_ids
        ids = example.prompt_ids + completion
        expected.append(_hf_row_logps(model, processing, ids, len(example.prompt_ids), example_images))
    expected_logps = torch.stack(expected)
    torch.testing.assert_close(batched, expected_logps, rtol=1e-5, atol=1e-4)

    trainable = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(policy(batch.sequences).logps.sum(), trainable)
    theirs = torch.autograd.grad(
        torch.stack(
            [
                _hf_row_logps(model, processing, t.prompt_ids + c, len(t.prompt_ids), t.images)
                for t, c in [(t, t.chosen_ids) for t in tokenized] + [(t, t.rejected_ids) for t in tokenized]
            ]
        ).sum(),
        trainable,
    )
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)
    # A block of the batch (the chosen rows) scores as in the whole batch.
    torch.testing.assert_close(policy(batch.chosen()).logps, batched[: batch.size], rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_images_equals_transformers_generate(
    vlm: TinyVisionLanguageModel, processing: ImageProcessing
) -> None:
    from rlhf_lab.data.collate import PromptCollator
    from rlhf_lab.generation import SamplingConfig, generate

    rows = [
        pair([{"bytes": png((255, 0, 0))}]),
        pair([{"bytes": png((0, 0, 255))}], "A picture: <image>Colour of the shape?"),
    ]
    examples, _ = convert_rows(rows, file="d.jsonl")
    prompts = [e.__class__(**{**e.__dict__, "chosen": None, "rejected": None}) for e in examples]
    tokenized, _ = tokenize_examples(prompts, processing.tokenizer, TokenizeSettings(None, None), processing)
    batch = PromptCollator(pad_token_id=processing.tokenizer.pad_token_id, images=processing)(
        list(enumerate(tokenized))
    )
    torch.manual_seed(1)
    model = vlm.load_model().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    ids = dict(eos_token_id=processing.tokenizer.eos_token_id, pad_token_id=processing.tokenizer.pad_token_id)
    ours = generate(model, batch.sequences, SamplingConfig(max_new_tokens=6, do_sample=False), **ids)
    for row, example in enumerate(tokenized):  # each prompt alone through transformers' own generate
        input_ids = torch.tensor([example.prompt_ids])
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        pixels = processing.processor.image_processor(
            images=[i.load() for i in example.images], return_tensors="pt"
        )
        inputs.update(pixels)
        if "image_grid_thw" in pixels:
            inputs["mm_token_type_ids"] = (input_ids == model.config.image_token_id).int()
        theirs = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6, **ids)
        new = theirs[0, input_ids.shape[1] :]
        mine = ours.completion_ids[row][: new.numel()]
        mask = ours.completion_mask[row][: new.numel()]
        assert mine[mask].tolist() == new[: int(mask.sum())].tolist()


def test_generation_never_writes_image_tokens(
    vlm: TinyVisionLanguageModel, processing: ImageProcessing
) -> None:
    """A completion holding an image token would be read as an image's place: even a model that prefers them
    (here: its head made to) never generates one."""
    from rlhf_lab.data.collate import PromptCollator
    from rlhf_lab.generation import SamplingConfig, generate, multimodal_token_ids

    model = vlm.load_model().eval()
    banned = multimodal_token_ids(model)
    image_id = processing.tokenizer.convert_tokens_to_ids(processing.image_token)
    assert image_id in banned
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
        model.lm_head.bias[banned] = 1e4  # every position's logits now favour the image tokens
    examples, _ = convert_rows([pair([{"bytes": png((255, 0, 0))}])], file="d.jsonl")
    prompts = [examples[0].__class__(**{**examples[0].__dict__, "chosen": None, "rejected": None})]
    tokenized, _ = tokenize_examples(prompts, processing.tokenizer, TokenizeSettings(None, None), processing)
    batch = PromptCollator(pad_token_id=processing.tokenizer.pad_token_id, images=processing)(
        list(enumerate(tokenized))
    )
    ids = dict(eos_token_id=processing.tokenizer.eos_token_id, pad_token_id=processing.tokenizer.pad_token_id)
    for sampling in (SamplingConfig(max_new_tokens=8, do_sample=False), SamplingConfig(max_new_tokens=8)):
        generation = generate(
            model, batch.sequences, sampling, generator=torch.Generator().manual_seed(0), **ids
        )
        assert not set(generation.completion_ids[generation.completion_mask].tolist()) & set(banned)


# ---------------------------------------------------------------------------------- freezing, LoRA
def test_a_tiny_vlm_trains_its_vision_parts_and_a_hub_vlm_freezes_them(vlm: TinyVisionLanguageModel) -> None:
    """A random tower is not a pretrained one: the tiny VLM trains it and its projector by default, while the
    same weights loaded as a hub VLM (or any hub VLM config) keep them frozen unless unfrozen."""
    from rlhf_lab.models.vision import VisionLanguageModel, vision_parts

    def trainable(model: Any) -> tuple[set[str], set[str], set[str]]:
        parts = vision_parts(model)
        names = {name for name, p in model.named_parameters() if p.requires_grad}
        projector = {n for n in names if any(n.startswith(q) for q in parts["projector"])}
        tower = {n for n in names if any(n.startswith(t) for t in parts["vision_tower"])} - projector
        return tower, projector, names - tower - projector

    defaults = TinyVisionLanguageModel(architecture=vlm.architecture)
    assert (defaults.freeze_vision_tower, defaults.freeze_projector) == (False, False)
    unfrozen = TinyVisionLanguageModel(
        **{**vlm.__dict__, "freeze_vision_tower": False, "freeze_projector": False}
    )
    tower, projector, language = trainable(unfrozen.load_model())
    assert tower and projector and language
    hub = VisionLanguageModel(name_or_path=vlm.name_or_path, dtype="float32")
    assert (hub.freeze_vision_tower, hub.freeze_projector) == (True, True)
    tower, projector, language = trainable(hub.load_model())
    assert not tower and not projector and language
    only_projector = VisionLanguageModel(
        name_or_path=vlm.name_or_path, dtype="float32", freeze_projector=False
    )
    tower, projector, language = trainable(only_projector.load_model())
    assert not tower and projector and language


def test_the_tiny_vlm_config_trains_its_vision_parts_and_hub_vlm_configs_freeze_them() -> None:
    from tests.conftest import compose_config

    for model, frozen in [("tiny_vlm", False), ("qwen2_vl_2b", True), ("qwen2_vl_7b", True)]:
        model_cfg = compose_config([f"model={model}", "data=synthetic_vision"]).model
        assert (model_cfg.freeze_vision_tower, model_cfg.freeze_projector) == (frozen, frozen), model
    for model in ("qwen2_5_vl_7b", "llava1_6_mistral_7b"):
        model_cfg = compose_config([f"model={model}", "data=synthetic_vision"]).model
        assert model_cfg.freeze_vision_tower and model_cfg.freeze_projector, model


# ---------------------------------------------------------------------------------- the export's processor
#: Run first in a process that must behave as if torchvision were not installed (whether or not it is).
NO_TORCHVISION = """
import importlib.util, sys
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "torchvision" else _find_spec(name, *a, **k)
sys.modules["torchvision"] = None  # importing it fails
"""
RELOAD = """
import sys, torch
from PIL import Image
from transformers import AutoProcessor
from rlhf_lab.models.vision import load_processor
out, *directories = sys.argv[1:]
image = Image.new("RGB", (32, 32), (255, 0, 0))
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
def encoded(processor):
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))
results = {}
for directory in directories:
    try:
        auto = encoded(AutoProcessor.from_pretrained(directory))
    except ImportError as error:
        auto = str(error)
    results[directory] = {"auto": auto, "load_processor": encoded(load_processor(directory))}
torch.save(results, out)
"""


def test_the_saved_processor_reloads_without_torchvision(tmp_path: Path) -> None:
    """LLaVA's and LLaVA-NeXT's with ``AutoProcessor``; Qwen2-VL's needs torchvision there (its video processor
    does, in transformers' class check too), and `load_processor` reloads it: the same pixels and tokens."""
    import subprocess
    import sys

    from rlhf_lab.models.vision import save_processor

    image = Image.new("RGB", (32, 32), (255, 0, 0))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    expected = {}
    for architecture in ARCHITECTURES:
        spec = TinyVisionLanguageModel(architecture=architecture, cache_dir=os.environ["RLHF_LAB_CACHE"])
        spec.prepare(lambda: CORPUS)
        processor = spec.load_processor()
        processor.tokenizer = spec.load_tokenizer()
        save_processor(processor, tmp_path / architecture)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expected[str(tmp_path / architecture)] = dict(
            processor(text=[text], images=[image], return_tensors="pt")
        )
    out = tmp_path / "reloaded.pt"
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCHVISION + RELOAD, str(out), *expected],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = torch.load(out, weights_only=False)
    for directory, original in expected.items():
        loaders = reloaded[directory]
        if isinstance(loaders["auto"], str):  # the error AutoProcessor raised
            assert directory.endswith("qwen2_vl")
            assert "Qwen2VLVideoProcessor requires the Torchvision library" in loaders.pop("auto")
        assert "pixel_values" in original
        for encoded in loaders.values():
            assert encoded.keys() == original.keys()
            for key, value in original.items():
                assert torch.equal(encoded[key], value), (directory, key)
