"""`python -m rlhf_lab.chat`: one-shot and interactive replies are the model's own greedy continuation of its
chat template, for a text export, a peft adapter export and a vision-language export; bad input is one line."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from rlhf_lab.chat import ChatOptions, chat, main, parse_args
from rlhf_lab.errors import ConfigError
from rlhf_lab.export import export_model
from rlhf_lab.models.tiny import TinyModel
from rlhf_lab.models.tiny_vlm import TinyVisionLanguageModel
from tests.subprocesses import python_module

CORPUS = ["What colour is the shape?", "It is red.", "It is blue.", "Tell me the colour of the square."] * 8
QUESTION = "What colour is the shape?"


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Random weights of a fixed seed: replies that differ from one prompt to another.
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding the export of a tiny text model."""
    spec = TinyModel(cache_dir=os.environ["RLHF_LAB_CACHE"])
    spec.prepare(lambda: CORPUS)
    run_dir = tmp_path_factory.mktemp("text_run")
    export_model(_perturbed(spec.load_model(), 0), spec.load_tokenizer(), run_dir / "export")
    return run_dir


def _greedy(model, tokenizer, inputs: dict, max_new_tokens: int) -> str:
    """``model.generate`` (greedy) on ``inputs``, the new tokens decoded."""
    with torch.no_grad():
        output = model.eval().generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _template_inputs(tokenizer, messages: list[dict]) -> dict:
    return dict(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    )


def test_one_shot_prompt_replies_with_the_greedy_continuation_of_the_chat_template(
    text_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = text_run / "export"
    tokenizer = AutoTokenizer.from_pretrained(export)
    inputs = _template_inputs(tokenizer, [{"role": "user", "content": QUESTION}])
    expected = _greedy(AutoModelForCausalLM.from_pretrained(export), tokenizer, inputs, 8)
    assert expected  # something to compare

    main([str(text_run), "--prompt", QUESTION, "--max-new-tokens", "8"])  # the run directory
    main([str(export), f"prompt={QUESTION}", "max_new_tokens=8"])  # the export, key=value style
    assert capsys.readouterr().out.splitlines() == [expected, expected]


def test_a_conversation_keeps_its_history_until_reset(text_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = text_run / "export"
    out = io.StringIO()
    chat(
        ChatOptions(str(text_run), max_new_tokens=6),
        lines=["Hello", "It is red.", "/reset", "Hello"],
        out=out,
    )
    first, second, after_reset = out.getvalue().splitlines()
    assert after_reset == first  # the same single-turn conversation again

    tokenizer = AutoTokenizer.from_pretrained(export)
    history = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "It is red."},
    ]
    model = AutoModelForCausalLM.from_pretrained(export)
    assert second == _greedy(model, tokenizer, _template_inputs(tokenizer, history), 6)


def test_an_adapter_export_replies_through_its_base_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    spec = TinyModel(cache_dir=os.environ["RLHF_LAB_CACHE"])
    spec.prepare(lambda: CORPUS)
    lora = get_peft_model(spec.load_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter: lora_B away from its zero init
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    export = export_model(lora, spec.load_tokenizer(), tmp_path / "export", merge_adapter=False)
    assert (export / "adapter_config.json").is_file() and not (export / "config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(export)
    inputs = _template_inputs(tokenizer, [{"role": "user", "content": QUESTION}])
    expected = _greedy(AutoPeftModelForCausalLM.from_pretrained(export), tokenizer, inputs, 8)
    base = _greedy(spec.load_model(), tokenizer, inputs, 8)
    main([str(tmp_path), "--prompt", QUESTION, "--max-new-tokens=8"])
    assert capsys.readouterr().out.strip() == expected != base


def test_a_vision_language_export_replies_about_the_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForImageTextToText

    from rlhf_lab.models.vision import load_processor

    spec = TinyVisionLanguageModel(architecture="qwen2_vl", cache_dir=os.environ["RLHF_LAB_CACHE"])
    spec.prepare(lambda: CORPUS)
    processor = spec.load_processor()
    processor.tokenizer = spec.load_tokenizer()
    export = export_model(_perturbed(spec.load_model(), 2), processor, tmp_path / "export")
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(red)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(blue)

    model = AutoModelForImageTextToText.from_pretrained(export)
    processor = load_processor(str(export))  # AutoProcessor's, or (no torchvision) the same class assembled
    expected = {}
    for name, path in (("red", red), ("blue", blue)):
        # transformers' own pipeline: the template renders the image part, the processor expands it.
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": Image.open(path)}, {"type": "text", "text": QUESTION}],
            }
        ]
        inputs = dict(
            processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
        )
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).int()
        expected[name] = _greedy(model, processor.tokenizer, inputs, 8)
        main([str(tmp_path), "--prompt", QUESTION, "--image", str(path), "--max-new-tokens", "8"])
    # DeepSpeed logs "Setting accelerator to CPU" to stdout when a process first imports it (order-dependent).
    replies = [line for line in capsys.readouterr().out.splitlines() if "[real_accelerator.py" not in line]
    assert replies == [expected["red"], expected["blue"]]
    assert expected["red"] != expected["blue"]  # the reply depends on the pixels


def test_options_in_both_styles_and_bad_ones_named() -> None:
    assert parse_args(["run", "--temperature", "0.7", "seed=3", "--top-p=0.9"]) == ChatOptions(
        "run", temperature=0.7, seed=3, top_p=0.9
    )
    assert parse_args(["run_dir=out/x", "--max-new-tokens", "4"]) == ChatOptions("out/x", max_new_tokens=4)
    with pytest.raises(ConfigError, match="unknown option 'beam'"):
        parse_args(["run", "--beam", "2"])
    with pytest.raises(ConfigError, match="max_new_tokens='many' is not an int"):
        parse_args(["run", "max_new_tokens=many"])
    with pytest.raises(ConfigError, match="temperature=-1.0 is out of range"):
        parse_args(["run", "--temperature", "-1"])
    with pytest.raises(ConfigError, match="name a run directory"):
        parse_args(["--prompt", "hi"])


def test_errors_are_one_line_with_exit_status_2(
    tmp_path: Path, text_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    picture = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(picture)
    cases = {
        str(tmp_path / "missing"): "no such directory",
        str(tmp_path / "empty"): "not an export",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main([path, "--prompt", "hi"])
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: {path}: {message}")
    with pytest.raises(SystemExit):
        main([str(text_run), "--prompt", "hi", "--image", str(picture)])
    assert (
        capsys.readouterr().err.strip()
        == f"error: image={picture}: this export is a text model; it cannot take images"
    )


def test_the_command_reports_a_missing_directory_without_a_traceback(tmp_path: Path) -> None:
    result = python_module("rlhf_lab.chat", str(tmp_path / "nowhere"), "prompt=hi")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nowhere'}: no such directory (give a run directory or its export/)"
    )
    assert result.stdout == ""
