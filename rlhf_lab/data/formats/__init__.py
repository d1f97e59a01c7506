"""Row layouts: each peer's data layout detected, read and checked into `PreferenceExample`.

One module per layout family registers its layouts (`registry.register`): `trl` (TRL's preference,
unpaired, prompt-completion, language-modeling and prompt-only layouts), `conversation` (OpenAI
``messages``, ShareGPT ``conversations``, LLaMA-Factory v1), `alpaca` and `swift` (ms-swift's
query/response). `validate` holds the row reader (`RowContext`) and the structure checks they share,
`turns` the reading of conversations, `speakers` the speaker names, `texts` the text checks, `mapping` the
column and tag mapping (``data.columns``, ``data.tags``, ``dataset_info.json``), `convert` the conversion of
a file.
"""

from rlhf_lab.data.formats import alpaca, conversation, swift, trl  # noqa: F401 - register the layouts
from rlhf_lab.data.formats.convert import (
    Conversion,
    convert_file,
    convert_rows,
    image_dir,
    to_example,
    to_unpaired,
)
from rlhf_lab.data.formats.example import DataError, Message, PreferenceExample
from rlhf_lab.data.formats.mapping import ColumnMapping
from rlhf_lab.data.formats.registry import LAYOUTS, Layout, Parsed, detect_format, layouts, register
from rlhf_lab.data.formats.texts import is_blank

#: Every layout ``data.format`` may name (besides ``auto``), in detection order.
FORMATS = tuple(layout.name for layout in layouts())

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "ColumnMapping",
    "Conversion",
    "DataError",
    "Layout",
    "Message",
    "Parsed",
    "PreferenceExample",
    "convert_file",
    "convert_rows",
    "detect_format",
    "image_dir",
    "is_blank",
    "layouts",
    "register",
    "to_example",
    "to_unpaired",
]
