"""Tabular agents (agents/tabular.py) against docs/algorithms.md §1–§2.

1. every pure update on hand-computed numbers;
2. convergence on the classic 5×5 world (γ = 0.9) to the exact oracle: v_π of the uniform policy for TD(0)/MC,
   v* for the control methods. These runs use the real Trainer loop, storage and agent.update, but a collector
   that samples the world's model in torch (1024 chains at once) instead of 1024 gymnasium envs: the same
   transitions, ~100× faster;
3. Robbins–Monro vs constant step sizes, with the predicted numbers;
4. every agent through rl.train.run on GridWorld-v0 (gymnasium vector envs), charts/value_error in TensorBoard;
5. bad input through the CLI.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.tabular import (MC, SARSA, TD, ExpectedSARSA, NStepSARSA, QLearning, SlidingRollout, epsilon_greedy,
                            expected_sarsa_update, mc_return, mc_update, nstep_sarsa_update, qlearning_update,
                            sa_update, sarsa_update, td_update, visit_step_sizes)
from envs.bellman import policy_evaluation, value_iteration
from envs.gridworld import GridWorld
from rl.approximation import ConstantStepSize, RobbinsMonroStepSize
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
from rl.train import run
from rl.trainer import Trainer
from tests.conftest import run_cli

GAMMA = 0.9
t = torch.tensor
F, T = False, True


# -- 1. the pure updates, by hand -----------------------------------------------------------------------
def test_sa_update_is_the_textbook_line():
    # w(i) ← w(i) − α [w(i) − x]: 2 − 0.25 (2 − 6) = 3
    assert torch.equal(sa_update(t([0.0, 2.0]), t([1]), t([6.0]), t([0.25])), t([0.0, 3.0]))


def test_td_update():
    v = t([0.0, 2.0])
    # target 1 + 0.9 · 2 = 2.8; v(0) = 0 − 0.5 (0 − 2.8) = 1.4
    assert torch.allclose(td_update(v, t([0]), t([1.0]), t([1]), t([F]), t([0.5]), GAMMA), t([1.4, 2.0]))
    # terminated: no bootstrap, target 1
    assert torch.allclose(td_update(v, t([0]), t([1.0]), t([1]), t([T]), t([0.5]), GAMMA), t([0.5, 2.0]))


Q = t([[0.0, 0.0], [1.0, 3.0]])  # q[s, a]


def test_sarsa_update():
    # target 1 + 0.9 q(1, 0) = 1.9; q(0, 1) = 0 − 0.5 (0 − 1.9) = 0.95
    new = sarsa_update(Q, t([0]), t([1]), t([1.0]), t([1]), t([0]), t([F]), t([0.5]), GAMMA)
    assert torch.allclose(new, t([[0.0, 0.95], [1.0, 3.0]]))


def test_expected_sarsa_update():
    # Σ_a π(a|1) q(1, a) = 0.25 · 1 + 0.75 · 3 = 2.5; target 1 + 0.9 · 2.5 = 3.25; q(0, 1) = 1.625
    new = expected_sarsa_update(Q, t([0]), t([1]), t([1.0]), t([1]), t([[0.25, 0.75]]), t([F]), t([0.5]), GAMMA)
    assert torch.allclose(new, t([[0.0, 1.625], [1.0, 3.0]]))


def test_qlearning_update():
    # target 1 + 0.9 max_a q(1, a) = 3.7; q(0, 0) = 0 − 0.5 (0 − 3.7) = 1.85
    new = qlearning_update(Q, t([0]), t([0]), t([1.0]), t([1]), t([F]), t([0.5]), GAMMA)
    assert torch.allclose(new, t([[1.85, 0.0], [1.0, 3.0]]))


def test_nstep_sarsa_update():
    rewards = t([[1.0], [2.0]])  # [n=2, B=1]
    # target 1 + 0.9 · 2 + 0.81 q(1, 1) = 2.8 + 2.43 = 5.23; q(0, 0) = 0 − 1 (0 − 5.23)
    new = nstep_sarsa_update(Q, t([0]), t([0]), rewards, t([1]), t([1]), t([[F], [F]]), t([1.0]), GAMMA)
    assert torch.allclose(new[0, 0], t(5.23))
    # terminated after the first reward: target 1
    new = nstep_sarsa_update(Q, t([0]), t([0]), rewards, t([1]), t([1]), t([[T], [F]]), t([1.0]), GAMMA)
    assert torch.allclose(new[0, 0], t(1.0))
    # n = 1 is SARSA
    one = nstep_sarsa_update(Q, t([0]), t([1]), t([[1.0]]), t([1]), t([0]), t([[F]]), t([0.5]), GAMMA)
    assert torch.allclose(one, sarsa_update(Q, t([0]), t([1]), t([1.0]), t([1]), t([0]), t([F]), t([0.5]), GAMMA))


def test_mc_return_and_update():
    r = t([[1.0], [2.0], [3.0]])
    none = t([[F], [F], [F]])
    g, ok = mc_return(r, none, none, GAMMA)
    assert torch.allclose(g, t([1 + 0.9 * 2 + 0.81 * 3])) and ok.item()  # 5.23
    g, ok = mc_return(r, t([[F], [T], [F]]), none, GAMMA)  # terminated after 2 rewards: G = 2.8, complete
    assert torch.allclose(g, t([2.8])) and ok.item()
    _, ok = mc_return(r, none, t([[F], [T], [F]]), GAMMA)  # truncated before the 3rd reward: no sample of G
    assert not ok.item()
    _, ok = mc_return(r, none, t([[F], [F], [T]]), GAMMA)  # truncated at the horizon's last reward: complete
    assert ok.item()
    assert torch.allclose(mc_update(t([1.0, 0.0]), t([0]), t([5.0]), t([0.25])), t([2.0, 0.0]))


def test_epsilon_greedy():
    # ε/|A| + (1 − ε) on the argmax: 0.1, 0.1 + 0.7, 0.1
    assert torch.allclose(epsilon_greedy(t([[1.0, 3.0, 2.0]]), t([0.3])), t([[0.1, 0.8, 0.1]]))


def test_visit_step_sizes_count_each_visit():
    one_over_k = RobbinsMonroStepSize(a0=1.0, p=1.0)
    alpha, counts = visit_step_sizes(t([0, 2]), t([1, 0, 1]), one_over_k)
    # entry 0: visit 1 gets a_1 = 1; entry 1: visits 3 and 4 share 1 − (1 − 1/3)(1 − 1/4) = 1/2, 1/4 each
    assert torch.allclose(alpha, t([0.25, 1.0, 0.25])) and counts.tolist() == [1, 4]
    # several samples of one entry in a batch = as many sequential steps towards their mean (constant a = 0.5:
    # 1 − 0.5² = 0.75 in all, 0.375 each)
    alpha, _ = visit_step_sizes(t([0]), t([0, 0]), ConstantStepSize(0.5))
    assert torch.allclose(alpha, t([0.375, 0.375]))


def test_one_over_k_gives_the_exact_sample_mean_in_any_batching():
    g = torch.Generator().manual_seed(0)
    index, x = torch.randint(0, 4, (500,), generator=g), torch.randn(500, generator=g, dtype=torch.float64)
    w, counts, start = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.int64), 0
    for size in torch.randint(1, 40, (100,), generator=g).tolist():
        i, xi = index[start:start + size], x[start:start + size]
        alpha, counts = visit_step_sizes(counts, i, RobbinsMonroStepSize(a0=1.0, p=1.0))
        w, start = sa_update(w, i, xi, alpha.double()), start + size
        if start >= 500:
            break
    seen = index[:start]
    means = torch.stack([x[:start][seen == k].mean() for k in range(4)])
    assert torch.allclose(w, means, atol=1e-6)


def test_sliding_rollout_windows():
    spec = {"x": ((), torch.int64)}
    buf = SlidingRollout(stride=2, lookahead=1, num_envs=1, spec=spec, device=torch.device("cpu"))
    windows = []
    for step in range(7):
        buf.add({"x": t([step])})
        windows += [w["x"].flatten().tolist() for w in buf.batches()]
    assert windows == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]  # rows 0..1 updated, row 2 looked ahead to


# -- 2. convergence to the exact oracle on the classic world ----------------------------------------------
class ModelCollector:
    """``n`` chains of the grid world sampled from its (deterministic) model, in torch; each episode lasts
    ``episode_steps`` steps (then truncated) and starts in a uniformly random cell (exploring restarts)."""

    def __init__(self, env: GridWorld, n: int, episode_steps: int, seed: int) -> None:
        P, R = env.transition_model()
        self.next, self.r = torch.as_tensor(P.argmax(-1)), torch.as_tensor(R, dtype=torch.float32)
        self.n, self.steps, self.g = n, episode_steps, torch.Generator().manual_seed(seed)
        self.obs = torch.randint(env.n_states, (n,), generator=self.g)
        self.t = torch.randint(episode_steps, (n,), generator=self.g)  # staggered episode clocks

    def collect(self, agent, storage, random_actions):
        action, extras = agent.act(self.obs, explore=True)
        next_obs, reward = self.next[self.obs, action], self.r[self.obs, action]
        self.t += 1
        truncated = self.t >= self.steps
        storage.add({"obs": self.obs, "action": action, "reward": reward, "next_obs": next_obs,
                     "terminated": torch.zeros(self.n, dtype=torch.bool), "truncated": truncated, **extras})
        restart = torch.randint(self.next.shape[0], (self.n,), generator=self.g)
        self.obs = torch.where(truncated, restart, next_obs)
        self.t[truncated] = 0
        return self.n, []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def close(self):
        pass


CLASSIC = GridWorld()
P, R = CLASSIC.transition_model()
V_UNIFORM = policy_evaluation(P, R, np.full((25, 5), 0.2), GAMMA)
V_STAR = value_iteration(P, R, GAMMA)[0]


def train_on_model(agent_cls, transitions: int, episode_steps: int, chains: int = 1024, seed: int = 0,
                   evals: int = 10, snapshots: list | None = None, **hyperparameters) -> tuple[object, list[float]]:
    """Real Trainer + storage + agent.update on model-sampled chains; returns the agent and its value errors
    at ``evals`` evenly spaced evaluations (``snapshots``, if given, receives values() at each)."""
    cfg = Config(agent=agent_cls.config_cls(gamma=GAMMA, **hyperparameters),
                 env=EnvConfig(name="gridworld", id="GridWorld-v0", num_envs=chains, max_episode_steps=episode_steps),
                 buffer=BufferConfig(), logger=LoggerConfig(tensorboard=False), seed=seed, device="cpu",
                 trainer=TrainerConfig(total_steps=transitions, log_every=transitions, eval_every=transitions // evals,
                                       checkpoint_every=0, progress=False))
    torch.manual_seed(seed)
    agent = agent_cls(CLASSIC.observation_space, CLASSIC.action_space, cfg.agent, "cpu")
    exact = agent.exact_values(P, R)
    errors: list[float] = []

    def value_error(a):
        errors.append(float(np.abs(a.values() - exact).max()))
        if snapshots is not None:
            snapshots.append(a.values())
        return {"charts/value_error": errors[-1]}

    Trainer(cfg, agent, collector=ModelCollector(CLASSIC, chains, episode_steps, seed), evaluator=value_error).run()
    return agent, errors


# Control: optimistic start (q = r_target / (1 − γ) = 10), GLIE ε(s) = 1 / (1 + n(s)/100), a_k = 3 / (k + 8)^0.51
# (a_1 ≈ 1; p near 0.5 lets rarely tried actions forget targets from the early, exploring policy), 4-step
# episodes from random cells. With the defaults (p = 0.7, q = 0) SARSA can settle for an action whose q* is 0.1
# below the best (e.g. in cell (0, 1): right 5.58, down 5.48) for millions of steps.
CONTROL = dict(p=0.51, a0=3.0, k0=8.0, init=10.0, epsilon_halflife=100.0)

CASES = {  # agent: (transitions, episode steps, hyperparameters, exact oracle)
    "td": (TD, 2_000_000, 4, dict(p=0.7), V_UNIFORM),
    "mc": (MC, 2_000_000, 1000, dict(p=1.0), V_UNIFORM),  # 1/k: v(s) is the sample mean of the returns
    "sarsa": (SARSA, 3_000_000, 4, CONTROL, V_STAR),
    "expected_sarsa": (ExpectedSARSA, 2_000_000, 4, CONTROL, V_STAR),
    "nstep_sarsa": (NStepSARSA, 3_000_000, 4, dict(CONTROL, n=3), V_STAR),
    "qlearning": (QLearning, 500_000, 4, dict(p=0.51, a0=3.0, k0=8.0), V_STAR),  # uniform behaviour (ε = 1)
}


@pytest.mark.parametrize("name", list(CASES))
def test_converges_to_the_exact_values(name):
    agent_cls, transitions, episode_steps, hp, oracle = CASES[name]
    agent, errors = train_on_model(agent_cls, transitions, episode_steps, **hp)
    assert np.allclose(agent.exact_values(P, R), oracle)
    print(f"{name}: max-abs value error every {transitions // 10} transitions:", [round(e, 3) for e in errors])
    assert errors[-1] < 0.05, errors
    assert errors[-1] < errors[0] / 2, errors


# -- 3. Robbins–Monro settles, a constant step keeps fluctuating -----------------------------------------
def test_robbins_monro_settles_where_a_constant_step_fluctuates():
    """Estimate E[r] in cell (0, 0) under the uniform policy: r = −1 (up, left: the wall) w.p. 0.4, else 0;
    σ² = 0.24. 200 independent estimates, 6000 updates each, through visit_step_sizes + sa_update.

    Constant a: the estimate is an exponential average whose stationary spread is σ √(a / (2 − a)) at every k.
    a_k = 1/k: it is the sample mean, spread σ / √k → 0.
    """
    rewards, probs = torch.tensor([-1.0, 0.0]), torch.tensor([0.4, 0.6])
    assert torch.equal(torch.tensor(R[0, [0, 3, 1, 2, 4]], dtype=torch.float32), torch.tensor([-1.0, -1, 0, 0, 0]))
    sigma, n, steps, K = math.sqrt(0.24), 200, 6000, 1000
    torch.manual_seed(0)
    spread = {}
    for name, schedule in {"constant": ConstantStepSize(0.1), "rm": RobbinsMonroStepSize(a0=1.0, p=1.0)}.items():
        w, counts, index, trace = torch.zeros(n), torch.zeros(n, dtype=torch.int64), torch.arange(n), []
        for _ in range(steps):
            alpha, counts = visit_step_sizes(counts, index, schedule)
            w = sa_update(w, index, rewards[torch.multinomial(probs, n, replacement=True)], alpha)
            trace.append(w)
        trace = torch.stack(trace)  # [steps, n]
        spread[name] = {"across": trace[-1].std().item(), "early": trace[K:2 * K].std(0).mean().item(),
                        "late": trace[-K:].std(0).mean().item(), "mean": trace[-1].mean().item()}
    print(spread)
    c, rm = spread["constant"], spread["rm"]
    level = sigma * math.sqrt(0.1 / 1.9)  # 0.112
    # constant: the spread over the last K updates stays at the predicted level, early and late
    assert c["early"] == pytest.approx(level, rel=0.1) and c["late"] == pytest.approx(level, rel=0.1)
    assert c["across"] == pytest.approx(level, rel=0.2)
    # RM: the spread shrinks like σ/√k (0.0063 at k = 6000) and the estimate sits on E[r] = −0.4
    assert rm["across"] == pytest.approx(sigma / math.sqrt(steps), rel=0.2)
    assert rm["late"] < rm["early"] / 2 and rm["late"] < c["late"] / 50
    assert rm["mean"] == pytest.approx(-0.4, abs=0.003)


def test_td_with_a_constant_step_keeps_fluctuating_on_the_grid_world():
    """TD(0) on the classic world, 1M transitions, values read 40 times. Spread = the std of v(s) over a
    stretch of readings, averaged over s. RM (a_k = k^-0.7): the spread shrinks (like √a_k ∝ k^-0.35: × 0.74
    from the 2nd to the 4th quarter); constant a = 0.1 (per visit; ~40 visits per cell and batch make it ≈ 1 per
    batch): it stays where it is, and so does the error."""
    runs = {}
    for name, hp in {"rm": dict(p=0.7), "constant": dict(step_size="constant", a0=0.1)}.items():
        snapshots: list = []
        _, errors = train_on_model(TD, 1_000_000, 4, evals=40, snapshots=snapshots, **hp)
        v = np.stack(snapshots)  # [41, S]
        runs[name] = {"mid": v[10:20].std(0).mean(), "late": v[30:].std(0).mean(), "error": np.mean(errors[30:])}
    print(runs)
    rm, c = runs["rm"], runs["constant"]
    assert rm["late"] < 0.8 * rm["mid"] and c["late"] > 0.9 * c["mid"]
    assert rm["late"] < c["late"] / 5 and rm["error"] < c["error"] / 3


# -- 4. through rl.train.run on GridWorld-v0 -------------------------------------------------------------
RUNS = {  # agent: (config class, hyperparameters, episode steps)
    "td": (TD, {}, 20),
    "mc": (MC, {}, 100),
    "sarsa": (SARSA, CONTROL, 10),
    "expected_sarsa": (ExpectedSARSA, CONTROL, 10),
    "nstep_sarsa": (NStepSARSA, CONTROL, 10),
    "qlearning": (QLearning, dict(p=0.51, a0=3.0, k0=8.0), 10),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_trains_through_rl_train_run_and_logs_value_error(name, tmp_path):
    agent_cls, hp, episode_steps = RUNS[name]
    steps = 32_000
    cfg = Config(agent=agent_cls.config_cls(**hp), device="cpu", seed=0, buffer=BufferConfig(),
                 logger=LoggerConfig(hparams=False),
                 env=EnvConfig(name="gridworld", id="GridWorld-v0", num_envs=16, max_episode_steps=episode_steps,
                               kwargs={"start": None}),
                 trainer=TrainerConfig(total_steps=steps, eval_every=steps // 4, eval_episodes=4, log_every=steps // 4,
                                       checkpoint_every=0, progress=False))
    result = run(cfg, run_dir=tmp_path)
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    ea.Reload()
    errors = ea.Scalars("charts/value_error")
    assert [e.step for e in errors] == [8000, 16000, 24000, 32000]
    assert errors[-1].value == pytest.approx(result["charts/value_error"], rel=1e-6)
    print(name, "value error:", [round(e.value, 3) for e in errors])
    assert errors[-1].value < errors[0].value and "eval/return_mean" in ea.Tags()["scalars"]


# -- 5. bad input ------------------------------------------------------------------------------------------
def check_refused(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_continuous_env_is_refused(tmp_path):
    proc = run_cli("agent=sarsa", "env=pendulum", "trainer.progress=false", "device=cpu", cwd=tmp_path)
    check_refused(proc, "error: tabular agent 'sarsa' needs Discrete observation and action spaces", "Box(")


def test_non_convergent_step_size_is_refused(tmp_path):
    proc = run_cli("agent=sarsa", "env=gridworld", "agent.p=0.3", "trainer.progress=false", "device=cpu",
                   cwd=tmp_path)
    check_refused(proc, "error: Robbins–Monro power p=0.3 does not give a convergent schedule", "0.5 < p <= 1")


@pytest.mark.parametrize("layout, message", [
    (["+env.kwargs.target=[9,9]"], "error: target (9, 9) is outside the 5x5 grid"),
    (["+env.kwargs.target=[1,1]", "+env.kwargs.forbidden=[[1,1]]"], "error: target (1, 1) is also a forbidden cell"),
])
def test_bad_grid_layout_is_refused(tmp_path, layout, message):
    proc = run_cli("agent=qlearning", "env=gridworld", *layout, "device=cpu", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
