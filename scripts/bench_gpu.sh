#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, one section per argument (run from the repository root on a CUDA machine
# with `pip install ".[mujoco,bench]"` done; each section prints a table and, when $OUT is set, writes JSON there).
#
#   bash scripts/bench_gpu.sh tests halfcheetah        # pytest -m gpu; DDPG HalfCheetah-v5 vs SB3
#   bash scripts/bench_gpu.sh td3-seeds                # TD3 HalfCheetah-v5, 5 seeds in one process, vs SB3 and LeanRL
#   bash scripts/bench_gpu.sh td3-seeds-tf32           # the same, shorter, fp32 against TF32 matmuls
#   bash scripts/bench_gpu.sh td3-seeds-fused          # the same, shorter, eager against inductor-compiled losses
#   bash scripts/bench_gpu.sh td3-seeds-spin           # the same, shorter, env processes sleeping against polling
#   bash scripts/bench_gpu.sh pendulum cartpole profiles halfcheetah-eager
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# DDPG, 1 env, 1 update per env step, 256x256 MLPs, batch 256, lr 3e-4 (the issue's settings).
HC=(agent=ddpg env=halfcheetah trainer.learning_starts=10000 agent.actor_lr=3e-4 agent.critic_lr=3e-4 device=cuda
    trainer.eval_episodes=5)

for section in "$@"; do
  echo "=== $section ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  case "$section" in
    tests)
      $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_torch_envs.py ;;
    halfcheetah)  # SB3 beside ours with CUDA graphs (30k steps), and 100k steps with graphs + overlapped updates
      $PY scripts/bench.py "${HC[@]}" trainer.total_steps=100000 --sb3-steps 12000 --seeds 0 \
        --variant graphs trainer.compile=true trainer.total_steps=30000 \
        --variant overlap trainer.compile=true trainer.overlap=true ;;
    halfcheetah-eager)  # eager vs CUDA graphs at equal steps
      $PY scripts/bench.py "${HC[@]}" trainer.total_steps=30000 --no-sb3 --seeds 0 \
        --variant eager trainer.compile=false --variant graphs trainer.compile=true ;;
    td3-seeds)  # TD3, 5 seeds as one batch (trainer.num_seeds=5), 300k steps per seed (the rate of a 1M run: ≥ 8,300
      # env steps/s summed over the seeds ⇔ 1M steps per seed in 10 min; 300k fit one device command at half
      # that rate), evaluated every 100k outside the timed figure; SB3's TD3 (one seed) over 2,000 steps after its
      # 25k-step warm-up; LeanRL's published figure beside
      $PY scripts/bench.py +experiment=td3_mujoco trainer.num_seeds=5 env.vectorization=shm device=cuda \
        trainer.compile=true trainer.overlap=true trainer.total_steps=300000 --eval-every 100000 --sb3-steps 27000 \
        --reference "LeanRL TD3, 1 seed, H100 (published)=936" ;;
    td3-seeds-tf32)  # the same at 100k steps per seed, without SB3: fp32 matmuls against TF32 (trainer.tf32)
      $PY scripts/bench.py +experiment=td3_mujoco trainer.num_seeds=5 env.vectorization=shm device=cuda \
        trainer.compile=true trainer.overlap=true trainer.total_steps=100000 --no-sb3 --seeds 0 \
        --variant fp32 --variant tf32 trainer.tf32=true ;;
    td3-seeds-fused)  # the same at 100k steps per seed, without SB3: eager losses against inductor-compiled ones (trainer.fuse)
      $PY scripts/bench.py +experiment=td3_mujoco trainer.num_seeds=5 env.vectorization=shm device=cuda \
        trainer.compile=true trainer.overlap=true trainer.total_steps=100000 --no-sb3 --seeds 0 \
        --variant eager-losses --variant fused trainer.fuse=true ;;
    td3-seeds-spin)  # the same at 100k steps per seed, without SB3: env workers and main process that sleep on their
      # semaphores (env.spin_us=0) against ones that poll them first (the default where the host has the cores)
      $PY scripts/bench.py +experiment=td3_mujoco trainer.num_seeds=5 env.vectorization=shm device=cuda \
        trainer.compile=true trainer.overlap=true trainer.total_steps=100000 --no-sb3 --seeds 0 \
        --variant sleep env.spin_us=0 --variant poll env.spin_us=2000 ;;
    pendulum)  # DDPG on 4096 GPU pendulums (wall_s: from building the agent to the end of the final evaluation)
      $PY scripts/bench.py +experiment=ddpg_pendulum_gpu device=cuda --sb3-num-envs 1 --sb3-steps 4000 \
        --sb3-learning-starts 1000 --seeds 0 1 2 ;;
    cartpole)  # A2C on 4096 GPU cartpoles
      $PY scripts/bench.py +experiment=a2c_cartpole_gpu device=cuda --sb3-num-envs 8 --sb3-steps 40000 --seeds 0 1 2 ;;
    profiles)
      $PY scripts/profile_run.py "${HC[@]}" trainer.learning_starts=2000 trainer.compile=true trainer.overlap=true \
        --steps 3000 ;
      $PY scripts/profile_run.py +experiment=ddpg_pendulum_gpu device=cuda --steps 4000000 --kernels ;
      $PY scripts/profile_run.py +experiment=a2c_cartpole_gpu device=cuda --steps 8000000 --kernels ;;
    *) echo "unknown section $section (tests halfcheetah halfcheetah-eager td3-seeds td3-seeds-tf32 td3-seeds-fused"\
         "td3-seeds-spin pendulum cartpole"\
         "profiles)"; exit 2 ;;
  esac
done
