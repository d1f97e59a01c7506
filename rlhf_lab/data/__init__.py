"""Preference data: formats, tokenisation, collation and the DataModule."""

from rlhf_lab.data.datamodule import PreferenceDataModule
from rlhf_lab.data.sources import HubDataset, LocalFiles, RowBlock
from rlhf_lab.data.synthetic import SyntheticPreferences

__all__ = ["HubDataset", "LocalFiles", "PreferenceDataModule", "RowBlock", "SyntheticPreferences"]
