"""rlhf_lab's Hydra config groups (YAML). A package so that Hydra finds them as ``pkg://rlhf_lab.conf``."""
