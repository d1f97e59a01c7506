"""Token helpers shared by the tokenisation tests."""

from __future__ import annotations

import copy
from typing import Any

from tokenizers import processors


def with_bos(tokenizer: Any) -> Any:
    """The same vocabulary, but ``add_special_tokens=True`` prepends ``<s>`` as Llama-style tokenizers do."""
    result = copy.deepcopy(tokenizer)
    result.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", result.bos_token_id)]),
        ]
    )
    return result


def ids(tokenizer: Any, *tokens: str) -> list[int]:
    """Ids of hand-written token strings, failing loudly on a token the vocabulary lacks."""
    result = tokenizer.convert_tokens_to_ids(list(tokens))
    assert tokenizer.unk_token_id not in result, tokens
    return result
