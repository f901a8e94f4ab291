#!/usr/bin/env bash
# The MuJoCo table's device runs (scripts/mujoco_table.py): each AGENT:ENV argument runs on its own GPU (the i-th on
# GPU i; AGENT:ENV@N puts it on GPU N, so that two tasks can share one), all at once, 5 seeds x 1M steps each, with
# the settings of the pair's preset (AGENT:ENV:2018 or AGENT:ENV:reference picks them: mujoco_table.py --settings),
# every one stopping cleanly after $MINUTES (default 9) minutes; run the same command again (on the same, still warm
# machine: the runs continue from outputs/table/) until every task says "done". Logs: $OUT/table_<name>.log
# (appended; <name> as the results': <agent>_<env>, with _2018 for the paper's settings); JSON and PNG in $OUT once
# a task reaches 1M steps.
#
#   bash scripts/mujoco_table.sh td3:halfcheetah td3:hopper          # a 2-GPU machine
#   bash scripts/mujoco_table.sh td3:walker2d@0 td3:ant@0 ddpg:hopper@1 ddpg:walker2d@1   # two tasks per GPU
#   bash scripts/mujoco_table.sh td3:hopper:reference@0 ddpg:hopper:2018@1   # other settings than the presets'
#   MINUTES=0.5 bash scripts/mujoco_table.sh td3:hopper              # a short check
#   ARGS="device=cpu --seeds 2 --steps 2000" bash scripts/mujoco_table.sh td3:pendulum   # more arguments for each task
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-docs/results/mujoco}
mkdir -p "$OUT"
pids=()
i=0
tasks=()
stems=()
for arg in "$@"; do
  task=${arg%@*} gpu=$i
  [[ $arg == *@* ]] && gpu=${arg##*@}
  tasks+=("$task")
  IFS=: read -r agent env settings <<< "$task"
  stem=$($PY scripts/mujoco_table.py "$agent" "$env" --settings "${settings:-preset}" --name) || exit 2
  stems+=("$stem")
  log="$OUT/table_$stem.log"  # named as the results are: <agent>_<env>, _2018 for the paper's settings
  echo "=== $task on GPU $gpu ($(date -u '+%Y-%m-%d %H:%M UTC'))" >> "$log"
  # shellcheck disable=SC2086  # ARGS: several words
  CUDA_VISIBLE_DEVICES=$gpu $PY scripts/mujoco_table.py "$agent" "$env" --settings "${settings:-preset}" \
    --minutes "${MINUTES:-9}" --out "$OUT" ${ARGS:-} >> "$log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
i=0
for task in "${tasks[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  case $rc in 0) status=done ;; 75) status="stopped at the time limit: run again" ;; *) status="FAILED (exit $rc)" ;; esac
  echo "== $task: $status"
  grep -v -e settotalmass -e '^$' "$OUT/table_${stems[$i]}.log" | tail -n 3
  i=$((i + 1))
done
