"""Every CPU preset of conf/agent_env/ trains to its target with no argument but the pair and the seed (slow: about
45 minutes on 2 CPU cores; ``python -m pytest -m slow tests/test_presets.py -s`` prints one line per run, the
figures of docs/benchmarks.md "Presets"). The MuJoCo presets (GPU, 1M steps) and Kimi's (tests/test_kimi.py) are
measured elsewhere.

Targets: CartPole-v1 ≥ 475 (solved; the cap is 500); Pendulum-v1 ≥ −200; on the grid world (docs/algorithms.md §2)
the learned values within 0.05 (max-abs) of the exact ones — v* for control, v_π of the uniform policy for TD and
MC — and, for control, a greedy action that is optimal in all 25 cells. Off-policy AC on the grid world: the same
with its critic on v* to 0.01. QAC on the grid world learns on-policy with an entropy bonus, so its critic tracks
its own soft policy, not v* (0.5–1.4 away), and its greedy action is not optimal in 1–2 cells: the check is that
the greedy policy reaches the target from every cell.
"""

import time

import pytest

from rl.train import run

SEEDS = (0, 1, 2)
SOLVED = {"cartpole": 475.0, "pendulum": -200.0}
VALUE_ERROR = {"offpac": 0.01}  # off-policy AC's critic on the grid world; every tabular agent: 0.05
POLICY_EVALUATION = ("td", "mc")  # evaluate the uniform policy: no greedy policy to check
PAIRS = [("a2c", "cartpole"), ("qac", "cartpole"), ("ddpg", "pendulum"), ("td3", "pendulum"), ("a2c", "pendulum"),
         ("td", "gridworld"), ("mc", "gridworld"), ("sarsa", "gridworld"), ("expected_sarsa", "gridworld"),
         ("nstep_sarsa", "gridworld"), ("qlearning", "gridworld"), ("qac", "gridworld"), ("offpac", "gridworld")]


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module("conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def test_every_cpu_pair_has_a_preset():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "agent_env"
    assert all((conf / f"{agent}_{env}.yaml").exists() for agent, env in PAIRS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agent,env", PAIRS, ids=[f"{a}_{e}" for a, e in PAIRS])
def test_preset_reaches_its_target(tmp_path, agent, env, seed):
    cfg = compose(f"agent={agent}", f"env={env}", "trainer.progress=false", "device=cpu", f"seed={seed}")
    start = time.perf_counter()
    result = run(cfg, run_dir=tmp_path)
    wall = time.perf_counter() - start
    print(f"\nPRESET {agent}_{env} seed={seed} steps={result['step']} return={result['return_mean']:.1f} "
          + " ".join(f"{k.split('/')[-1]}={result[k]:.4g}" for k in ("charts/value_error", "charts/optimal_cells")
                     if k in result) + f" wall={wall:.0f}s")
    assert result["step"] == cfg.trainer.total_steps
    if env in SOLVED:
        assert result["return_mean"] >= SOLVED[env]
        return
    if agent == "qac":
        assert reaches_target_from(tmp_path) == 25
        return
    assert result["charts/value_error"] < VALUE_ERROR.get(agent, 0.05)
    if agent not in POLICY_EVALUATION:
        assert result["charts/optimal_cells"] == 25


def reaches_target_from(run_dir) -> int:
    """Number of start cells from which the saved agent's greedy policy reaches the target within 30 moves."""
    import gymnasium as gym

    from agents import Agent

    agent = Agent.load(run_dir, device="cpu")
    env = gym.make("GridWorld-v0").unwrapped
    P, _ = env.transition_model()
    target, reached = env.to_state(env.target), 0
    for start in range(P.shape[0]):
        s = start
        for _ in range(30):
            s = s if s == target else int(P[s, int(agent.predict(s))].argmax())
        reached += s == target
    return reached


@pytest.mark.parametrize("agent", ["td3", "ddpg"])
@pytest.mark.parametrize("env", ["halfcheetah", "hopper", "walker2d", "ant"])
def test_mujoco_pairs_train_with_the_table_settings(agent, env):
    """``agent=td3 env=walker2d`` alone gives the settings of its row in the MuJoCo table (docs/benchmarks.md), which
    ``scripts/mujoco_table.py`` runs by default (``preset_settings``): the same agent (networks, learning rates), 1M
    steps, the same random steps and batch. TD3 on Hopper and Walker2d and DDPG on Walker2d and Ant take the paper's
    own settings (2018), with which they reach the paper; every other pair the reference implementation's later
    ones."""
    from scripts.mujoco_table import preset_settings, settings_overrides

    settings = preset_settings(agent, env)
    paper_settings = {("td3", "hopper"), ("td3", "walker2d"), ("ddpg", "walker2d"), ("ddpg", "ant")}
    assert settings == ("2018" if (agent, env) in paper_settings else "reference")
    pair = compose(f"agent={agent}", f"env={env}")
    table = compose(*settings_overrides(agent, env, settings), f"env={env}")
    assert pair.agent == table.agent and pair.env == table.env
    for key in ("total_steps", "learning_starts", "batch_size", "utd_ratio"):
        assert pair.trainer[key] == table.trainer[key], key
    random_steps = 25_000 if settings == "reference" else 10_000 if env in ("halfcheetah", "ant") else 1_000
    assert (pair.trainer.total_steps, pair.trainer.learning_starts) == (1_000_000, random_steps)
    assert list(pair.agent.hidden_sizes) == ([400, 300] if settings == "2018" else [256, 256])
