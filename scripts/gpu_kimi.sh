#!/usr/bin/env bash
# The LLM figures of docs/benchmarks.md (issues 10 and 11), one section per argument, from the repository root of a
# machine with two GPUs (ours on GPU 0 beside TRL on GPU 1; "scale" uses both). Logs and JSON go to $OUT when set.
#
#   bash scripts/gpu_kimi.sh tests bench-0.5b bench-1.5b      # pytest -m gpu (Kimi); ours vs TRL at two shapes
#   bash scripts/gpu_kimi.sh race bench-7b scale countdown
#   bash scripts/gpu_kimi.sh profile                               # where an iteration's time goes (1.5B, GPU 0)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu_kimi}
mkdir -p "$OUT"
BENCH=(--parallel --dtype bfloat16 --prompts 32 --k 8 --max-new-tokens 512 --warmup 1)

for section in "$@"; do
  echo "=== $section ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  case "$section" in
    tests) $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_kimi.py 2>&1 | tail -3 ;;
    bench-0.5b) $PY scripts/bench_llm.py --shape 0.5b "${BENCH[@]}" --iterations 3 2>&1 | grep -v -i "warn\|Loading\|Writing" ;;
    bench-1.5b) $PY scripts/bench_llm.py --shape 1.5b "${BENCH[@]}" --iterations 3 2>&1 | grep -v -i "warn\|Loading\|Writing" ;;
    bench-7b) $PY scripts/bench_llm.py --shape 7b --lora 16 "${BENCH[@]}" --iterations 2 2>&1 | grep -v -i "warn\|Loading\|Writing" ;;
    race) $PY scripts/kimi_vs_trl.py --minutes 3.5 --out "$OUT/race" 2>&1 | grep -v -i "warn\|Loading\|Writing\|train_runtime" ;;
    scale) $PY scripts/scale_kimi.py --out "$OUT/scale" 2>&1 | grep -v -i "warn\|Loading\|Writing" ;;
    profile) CUDA_VISIBLE_DEVICES=0 $PY scripts/profile_kimi.py --shape 1.5b --json "$OUT/profile_1.5b.json" 2>&1 \
               | grep -v -i "warn\|Loading\|Writing" ;;
    countdown) $PY -m rl.train agent=kimi env=countdown device=cuda trainer.progress=false hydra.run.dir="$OUT/countdown" \
                 2>&1 | grep -i "accuracy\|done\|error" | tail -5 ;;
    *) echo "unknown section $section (tests bench-0.5b bench-1.5b bench-7b race scale profile countdown)"; exit 2 ;;
  esac
done
