"""Preference data: formats, tokenisation, collation and the DataModule."""

from rlhf_lab.data.collate import PreferenceCollator, UnpairedCollator
from rlhf_lab.data.datamodule import PreferenceDataModule
from rlhf_lab.data.formats import FORMATS, DataError, PreferenceExample, convert_rows, to_unpaired
from rlhf_lab.data.sources import HubDataset, LocalFiles, RowBlock
from rlhf_lab.data.suite import SuiteTask
from rlhf_lab.data.synthetic import SyntheticPreferences
from rlhf_lab.data.synthetic_vision import SyntheticImagePreferences

__all__ = [
    "FORMATS",
    "DataError",
    "HubDataset",
    "LocalFiles",
    "PreferenceCollator",
    "PreferenceDataModule",
    "PreferenceExample",
    "RowBlock",
    "SuiteTask",
    "SyntheticImagePreferences",
    "SyntheticPreferences",
    "UnpairedCollator",
    "convert_rows",
    "to_unpaired",
]
