#!/bin/bash
# Issue 21 item 2 on the GPU: our SGMV (sgmv-bench, every configuration) beside vLLM's Triton
# LoRA kernels on the same shapes, one device call. Run from the repository root with
# gpu-bin/sgmv-gpu.tar.xz (`kernels/bench/pack-gpu-bin.sh sgmv`) and gpu-bin/vllm_lora
# (`kernels/bench/fetch-vllm-lora.sh`, from vLLM's PyPI wheel, never committed) carried.
# Writes under $OUT: ours.csv, vllm_table.md, vllm.log. END_S (default 560): seconds after
# the start by which it has ended.
set -o pipefail
. kernels/bench/gpu-env.sh
mkdir -p /tmp/gv
tar -xJf gpu-bin/sgmv-gpu.tar.xz -C /tmp/gv || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee -a "$OUT/vllm.log"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/vllm.log"
echo "== sgmv-bench $(date -u +%T)" | tee -a "$OUT/vllm.log"
timeout $(left 150) /tmp/gv/sgmv-bench "$OUT/ours.csv" >> "$OUT/vllm.log" 2>&1; echo "exit $?"; tail -2 "$OUT/vllm.log"
echo "== vLLM lora_shrink + lora_expand $(date -u +%T)" | tee -a "$OUT/vllm.log"
PYTHONUNBUFFERED=1 timeout $(left 400) python3 kernels/bench/vllm_lora_baseline.py "$OUT/ours.csv" "$OUT/vllm_table.md" \
  gpu-bin/vllm_lora 2>> "$OUT/vllm.log" | tail -45
echo "exit $? $(date -u +%T), $(( $(date +%s) - T0 )) s" | tee -a "$OUT/vllm.log"
tail -5 "$OUT/vllm.log"
