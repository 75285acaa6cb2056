#!/usr/bin/env bash
# Issue 6 GPU run, one H200, about 6-9 minutes: FlexAttention vs eager check, the throughput bench
# (ours vs plain transformers+peft, GPT-oss-20B + CLIP-L/336 shapes, random weights, 4,096-token packed rows),
# then one 32,768-token row (long-context memory).
#
# From the repository root, on the device machine (device tool: `run`, timeout_s=600):
#     bash experiments/gpu/bench_h200.sh
# Results land in $OUT (default outputs/gpu): gpu.txt, versions.txt, attention_check.json, bench_4096.json,
# and the logs. The machine lacks hydra-core, omegaconf and antlr4-python3-runtime: fetch their wheels first
# (`bash experiments/gpu/fetch_wheels.sh`, into the git-ignored experiments/gpu/wheels) and carry that folder
# with the run (device tool: carry=["experiments/gpu/wheels"]).
# bitsandbytes is not needed (no QLoRA here).
set -uo pipefail
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
ls experiments/gpu/wheels/*.whl > /dev/null 2>&1 || { echo "no wheels: run bash experiments/gpu/fetch_wheels.sh here and carry experiments/gpu/wheels"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    experiments/gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)" | tee "$OUT/versions.txt"

# 1. Forward outputs and q/k/v/sink gradients of flex vs eager at 4,096 tokens (about 1 minute).
timeout 120 python3 experiments/gpu/check_attention.py "$OUT/attention_check.json" 2>&1 \
    | grep -v Warning | tee "$OUT/attention_check.log"

# 2. Throughput: instruct stage, LoRA r16, activation checkpointing, batch 1 x 4,096 tokens (4 samples of
#    1,024 tokens, one 336-px image = 576 tokens each), 2 warmup + 5 timed steps, then the baseline.
timeout 330 python3 -m medgpt_oss.bench seq_len=4096 sample_tokens=1024 batch_size=1 steps=5 warmup_steps=2 \
    2>&1 | tee "$OUT/bench_4096.log"
tail -n 1 "$OUT/bench_4096.log" > "$OUT/bench_4096.json"

# 3. Long context (issue 6): one 32,768-token row (8 samples of 4,096) trains with LoRA on the card; the
#    baseline is skipped (its whole-row fp32 logits alone are 26 GB). Peak memory is the figure to read.
timeout 120 python3 -m medgpt_oss.bench seq_len=32768 sample_tokens=4096 batch_size=1 steps=1 warmup_steps=1 \
    baseline=false 2>&1 | tee "$OUT/bench_32768.log"
tail -n 1 "$OUT/bench_32768.log" > "$OUT/bench_32768.json"
