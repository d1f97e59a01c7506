"""rlhf_lab: Hydra-composed experiments for aligning language models with human preferences."""

__version__ = "0.1.0"
