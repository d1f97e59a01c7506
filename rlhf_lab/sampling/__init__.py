"""Best-of-N and rejection sampling (`rlhf_lab.sample`): choosing from scored samples (`select`) and the
resumable chunk files they are written through (`store`)."""
