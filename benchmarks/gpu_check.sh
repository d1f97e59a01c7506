#!/usr/bin/env bash
# The GPU check in one window (under 8 minutes on one H100): every strategy and objective family on a ~0.5B
# model with Mistral-7B's tokenizer, then TRL's DPOTrainer on the same DPO work (benchmarks/gpu_check.py).
#
# The machine's CUDA PyTorch image has torch, lightning, transformers, peft, accelerate, pyarrow, pandas,
# sentencepiece, tiktoken and tokenizers. What rlhf_lab needs beyond them travels as wheels in .whl/ (pure
# Python, or manylinux x86-64 for Python 3.12), fetched here once with pip download (see
# docs/gpu-validation.md for the exact command):
#   hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3   (config)
#   trl 1.16.0, datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19, xxhash   (the TRL comparison)
#   mistral-common 1.13.1, pydantic 2.14.4, pydantic-core 2.50.5, annotated-types 0.8.0,
#   typing-inspection, jsonschema, jsonschema-specifications, referencing, rpds-py   (Mistral's tokenizer)
#   deepspeed 0.19.8, hjson, ninja (ZeRO-2/3: deepspeed ships an sdist only; build its wheel here with
#   `pip wheel --no-deps deepspeed==0.19.8 -w .whl` with DS_BUILD_OPS=0), bitsandbytes 0.50.2 (QLoRA)
# Carry .whl (64 MiB a call: bitsandbytes alone is large, so a window that needs QLoRA may carry it alone).
#
#   bash benchmarks/gpu_check.sh [--runs dpo_full,grpo] [--skip-trl]
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
python3 benchmarks/gpu_check.py --workdir "${OUT:-/tmp}/gpu_check_runs" "$@"
