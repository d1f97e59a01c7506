"""Reward functions, their resolution from config, and their weighted sum, against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.testing import assert_close

from rlhf_lab.errors import ConfigError
from rlhf_lab.rewards import (
    LengthTarget,
    RegexMatch,
    call_reward_function,
    check_reward_weights,
    combine_rewards,
    exact_match,
    resolve_reward_functions,
    reward_name,
    think_format,
)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------------------
# exact_match
# ---------------------------------------------------------------------------------------------------------


def test_exact_match_normalises_case_spacing_and_end_punctuation() -> None:
    """Lower-cased, runs of whitespace collapsed, spaces and . ! ? stripped from both ends."""
    completions = ["  The   Answer. ", "42!", "Paris?!", "\tnew\nyork\n", "forty two", "4 2"]
    answers = ["the answer", "42", "paris", "New York", "42", "42"]
    assert exact_match([], completions, [], answer=answers) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_exact_match_compares_the_answer_as_text() -> None:
    """A numeric answer matches its string form."""
    assert exact_match([], ["42", "41"], [], answer=[42, 42]) == [1.0, 0.0]


def test_exact_match_reads_conversational_completions() -> None:
    """[{"role": "assistant", "content": ...}] completions are judged by their content."""
    completions = [_assistant("Paris."), _assistant("Lyon")]
    assert exact_match([], completions, [], answer=["paris", "paris"]) == [1.0, 0.0]


def test_exact_match_is_none_where_there_is_no_answer() -> None:
    """A row whose answer is None is not applicable (None), not wrong (0.0)."""
    assert exact_match([], ["yes", "yes"], [], answer=[None, "yes"]) == [None, 1.0]


def test_exact_match_without_answer_column_names_it() -> None:
    """No 'answer' column: a ConfigError that says which column is missing."""
    with pytest.raises(ConfigError, match=r"needs an 'answer' \(or 'solution'\) column"):
        exact_match([], ["yes"], [], question=["?"])


def test_exact_match_reads_ms_swifts_solution_column() -> None:
    assert exact_match([], ["It is 3.", "4"], [], solution=["it is 3", "5"]) == [1.0, 0.0]
    # Both given: the answer wins.
    assert exact_match([], ["a"], [], answer=["a"], solution=["b"]) == [1.0]


# ---------------------------------------------------------------------------------------------------------
# RegexMatch / think_format
# ---------------------------------------------------------------------------------------------------------


def test_regex_match_is_a_full_match_of_the_stripped_completion() -> None:
    """\\d+: digits only (surrounding whitespace stripped), a trailing letter fails the full match."""
    digits = RegexMatch(r"\d+", name="digits")
    completions = ["123", " 45 \n", "12a", "a12", _assistant("7")]
    assert digits([], completions, []) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert reward_name(digits) == "digits"


def test_regex_match_default_name_and_bad_pattern() -> None:
    """Its metrics are named regex_match by default; an invalid pattern is a ConfigError."""
    assert reward_name(RegexMatch("x")) == "regex_match"
    with pytest.raises(ConfigError, match="not a regular expression"):
        RegexMatch("(unclosed")


def test_think_format() -> None:
    """<think>...</think> then <answer>...</answer>, reasoning across lines, nothing else around them."""
    completions = [
        "<think>2 + 2\nis 4</think>\n<answer>4</answer>",  # DOTALL: the newline inside <think> is fine
        "<think>x</think><answer>4</answer>",
        "<answer>4</answer>",  # no reasoning
        "<think>x</think><answer>4</answer> trailing",  # not a full match
        "<answer>4</answer><think>x</think>",  # wrong order
    ]
    assert think_format([], completions, []) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert reward_name(think_format) == "think_format"


# ---------------------------------------------------------------------------------------------------------
# LengthTarget
# ---------------------------------------------------------------------------------------------------------


def test_length_target_hand_values() -> None:
    """target 4: max(0, 1 - |n - 4|/4) for n = 0, 2, 4, 5, 8, 12 -> 0, 0.5, 1, 0.75, 0, 0."""
    reward = LengthTarget(target=4)
    ids = [[], [1, 2], [1] * 4, [1] * 5, [1] * 8, [1] * 12]
    assert reward([], [""] * 6, ids) == [0.0, 0.5, 1.0, 0.75, 0.0, 0.0]
    assert reward_name(reward) == "length_target"


def test_length_target_counts_tokens_not_characters() -> None:
    """The length is len(completion_ids): a long string of 3 tokens scores as 3 (1 - 1/4)."""
    assert LengthTarget(target=4)([], ["a very long completion text"], [[5, 6, 7]]) == [0.75]


def test_length_target_rejects_target_below_one() -> None:
    """target 0 would divide by zero."""
    with pytest.raises(ConfigError, match="target=0"):
        LengthTarget(target=0)


# ---------------------------------------------------------------------------------------------------------
# combine_rewards / check_reward_weights
# ---------------------------------------------------------------------------------------------------------


def test_combine_rewards_weighted_nansum_per_row() -> None:
    """Weights (2, 0.5): NaN (not applicable) drops out of its row; a row of NaNs sums to 0."""
    # [1, nan]   -> 2*1           = 2
    # [nan, nan] -> nothing       = 0
    # [0.5, 3]   -> 2*0.5 + 0.5*3 = 2.5
    # [nan, -4]  -> 0.5*-4        = -2
    nan = math.nan
    per_reward = torch.tensor([[1.0, nan], [nan, nan], [0.5, 3.0], [nan, -4.0]])
    weights = torch.tensor([2.0, 0.5], dtype=torch.float64)
    out = combine_rewards(per_reward, weights)
    assert_close(out, torch.tensor([2.0, 0.0, 2.5, -2.0]))
    assert out.dtype == torch.float32


def test_check_reward_weights_defaults_and_converts() -> None:
    """None: one weight 1.0 per reward; integers become floats."""
    assert check_reward_weights(None, 3) == [1.0, 1.0, 1.0]
    weights = check_reward_weights([1, 0.5], 2)
    assert weights == [1.0, 0.5]
    assert all(type(w) is float for w in weights)


def test_check_reward_weights_wrong_count() -> None:
    """Two weights for three rewards: a ConfigError naming algo.reward_weights and both counts."""
    with pytest.raises(ConfigError, match=r"algo\.reward_weights has 2 weights for 3 rewards"):
        check_reward_weights([1.0, 2.0], 3)


@pytest.mark.parametrize("bad", [True, "1", math.inf, math.nan, None])
def test_check_reward_weights_rejects_non_numbers(bad: object) -> None:
    """Booleans, strings and non-finite numbers are not weights."""
    with pytest.raises(ConfigError, match=r"algo\.reward_weights"):
        check_reward_weights([1.0, bad], 2)


# ---------------------------------------------------------------------------------------------------------
# resolve_reward_functions
# ---------------------------------------------------------------------------------------------------------


def test_resolve_import_path() -> None:
    """A dotted import path resolves to the function itself."""
    assert resolve_reward_functions(["rlhf_lab.rewards.exact_match"]) == [exact_match]


@pytest.mark.parametrize("wrap", [dict, OmegaConf.create])
def test_resolve_target_mapping(wrap) -> None:
    """A {_target_: ...} mapping (plain or OmegaConf) is instantiated with its arguments."""
    entry = wrap({"_target_": "rlhf_lab.rewards.RegexMatch", "pattern": r"\d+", "name": "digits"})
    [function] = resolve_reward_functions([entry])
    assert isinstance(function, RegexMatch)
    assert reward_name(function) == "digits"
    assert function([], ["12", "x"], []) == [1.0, 0.0]


def test_resolve_bad_path_names_the_entry() -> None:
    """An import path that does not exist: a ConfigError naming algo.reward_functions[<position>]."""
    with pytest.raises(ConfigError, match=r"algo\.reward_functions\[0\]"):
        resolve_reward_functions(["rlhf_lab.rewards.no_such_reward"])
    with pytest.raises(ConfigError, match=r"algo\.reward_functions\[1\].*no_such_module"):
        resolve_reward_functions(["rlhf_lab.rewards.exact_match", "no_such_module.fn"])


def test_resolve_not_callable() -> None:
    """An import path to a constant is not a reward function."""
    with pytest.raises(ConfigError, match=r"algo\.reward_functions\[0\].*not callable"):
        resolve_reward_functions(["math.pi"])


def test_resolve_duplicate_names() -> None:
    """Two rewards with one name would share metrics: a ConfigError naming the name."""
    with pytest.raises(ConfigError, match="'exact_match'"):
        resolve_reward_functions(["rlhf_lab.rewards.exact_match", "rlhf_lab.rewards.exact_match"])
    unnamed = {"_target_": "rlhf_lab.rewards.RegexMatch", "pattern": "a"}
    with pytest.raises(ConfigError, match="'regex_match'"):
        resolve_reward_functions([unnamed, dict(unnamed, pattern="b")])


# ---------------------------------------------------------------------------------------------------------
# call_reward_function
# ---------------------------------------------------------------------------------------------------------


def test_call_reward_function_passes_columns_and_maps_none_to_nan() -> None:
    """exact_match gets the answer column as a keyword; its None becomes NaN in a float32 tensor."""
    out = call_reward_function(
        exact_match, ["q"] * 3, ["a", "b", "c"], [[1], [2], [3]], {"answer": ["a", "x", None]}
    )
    assert out.dtype == torch.float32
    assert out[:2].tolist() == [1.0, 0.0]
    assert math.isnan(out[2].item())


def test_call_reward_function_accepts_ints() -> None:
    """Integer rewards are numbers too."""

    def ones(prompts, completions, completion_ids, **columns):
        return [1, 0]

    assert call_reward_function(ones, ["p", "p"], ["a", "b"], [[1], [2]], {}).tolist() == [1.0, 0.0]


def test_call_reward_function_wrong_length() -> None:
    """One value for two completions: a ValueError naming the function and both counts."""

    def short(prompts, completions, completion_ids, **columns):
        return [1.0]

    with pytest.raises(ValueError, match="short returned 1 values for 2 completions"):
        call_reward_function(short, ["p", "p"], ["a", "b"], [[1], [2]], {})


def test_call_reward_function_not_a_list() -> None:
    """A tensor is not a list of rewards."""

    def tensor_reward(prompts, completions, completion_ids, **columns):
        return torch.ones(2)

    with pytest.raises(ValueError, match="tensor_reward returned Tensor, not a list of 2 rewards"):
        call_reward_function(tensor_reward, ["p", "p"], ["a", "b"], [[1], [2]], {})


@pytest.mark.parametrize("bad", ["1.0", True, [1.0]])
def test_call_reward_function_non_number(bad: object) -> None:
    """A string, a bool or a list among the values: a ValueError quoting it."""

    def odd(prompts, completions, completion_ids, **columns):
        return [0.5, bad]

    with pytest.raises(
        ValueError, match=r"odd returned .* for a completion; a reward is a number \(or None\)"
    ):
        call_reward_function(odd, ["p", "p"], ["a", "b"], [[1], [2]], {})


def test_allowed_letters_is_the_share_of_the_completions_letters_the_prompt_allows() -> None:
    from rlhf_lab.prompt_rewards import allowed_letters

    ask = [{"role": "user", "content": "Write a word. Use only these letters: e s y z."}]
    prompts = [ask, ask, ask, "Use only these letters: a b c d.", "Write a word."]
    completions = [
        [{"role": "assistant", "content": "Yes!"}],  # y e s: 3 of 3 (case and punctuation aside)
        [{"role": "assistant", "content": "yak"}],  # y: 1 of 3
        [{"role": "assistant", "content": "..."}],  # no letters: 0
        "cab deck",  # c a b d c: 5 of 7 (e, k not allowed)
        "anything",  # no list in the prompt: not applicable
    ]
    scores = allowed_letters(prompts, completions, [[]] * 5)
    assert scores == [1.0, pytest.approx(1 / 3), 0.0, pytest.approx(5 / 7), None]
