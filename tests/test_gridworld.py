"""The textbook grid world (envs/gridworld.py) and the exact Bellman solvers (envs/bellman.py)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers GridWorld-v0)
from envs.bellman import greedy, one_hot, policy_evaluation, policy_iteration, q_from_v, value_iteration
from envs.gridworld import DOWN, LEFT, RIGHT, STAY, UP, GridWorld, GridWorldError

GAMMA = 0.9


@pytest.fixture(scope="module")
def classic() -> tuple[GridWorld, np.ndarray, np.ndarray]:
    env = GridWorld()
    P, R = env.transition_model()
    return env, P, R


# ----------------------------------------------------------------- gymnasium API
@pytest.mark.filterwarnings("ignore:.*not having a spec")  # a bare GridWorld() has no spec to re-make it from
@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_check_env(render_mode: str | None) -> None:
    check_env(GridWorld(render_mode=render_mode))
    check_env(GridWorld(start=None, render_mode=render_mode))
    # through the registry the env has a spec, so check_env also re-makes it in the other render modes
    check_env(gymnasium.make("GridWorld-v0", render_mode=render_mode).unwrapped)


def test_registered_with_time_limit() -> None:
    env = gymnasium.make("GridWorld-v0", max_episode_steps=3)
    obs, _ = env.reset(seed=0)
    assert obs == 0
    truncated = False
    for _ in range(3):
        _, _, terminated, truncated, _ = env.step(STAY)
        assert not terminated
    assert truncated


def test_random_start_is_seeded() -> None:
    env = GridWorld(start=None)
    starts = [env.reset(seed=s)[0] for s in range(50)]
    assert starts == [env.reset(seed=s)[0] for s in range(50)]
    assert len(set(starts)) > 10


# ----------------------------------------------------------------- dynamics on the classic world
def _step_from(env: GridWorld, cell: tuple[int, int], action: int) -> tuple[tuple[int, int], float, bool]:
    env.reset()
    env.state = env.to_state(cell)
    s, r, terminated, truncated, _ = env.step(action)
    assert not truncated
    return env.to_cell(s), r, terminated


def test_classic_moves(classic) -> None:
    env = classic[0]
    assert _step_from(env, (0, 0), UP) == ((0, 0), -1.0, False)  # off the grid: stays, r_boundary
    assert _step_from(env, (0, 0), LEFT) == ((0, 0), -1.0, False)
    assert _step_from(env, (4, 4), DOWN) == ((4, 4), -1.0, False)
    assert _step_from(env, (0, 1), DOWN) == ((1, 1), -1.0, False)  # into forbidden: moves in, r_forbidden
    assert _step_from(env, (1, 1), RIGHT) == ((1, 2), -1.0, False)  # forbidden → forbidden
    assert _step_from(env, (1, 1), LEFT) == ((1, 0), 0.0, False)  # leaving forbidden to a plain cell: r_other
    assert _step_from(env, (4, 2), UP) == ((3, 2), 1.0, False)  # into target: r_target
    assert _step_from(env, (3, 2), STAY) == ((3, 2), 1.0, False)  # stay on target: r_target, not terminal
    assert _step_from(env, (0, 0), RIGHT) == ((0, 1), 0.0, False)
    assert _step_from(env, (0, 0), STAY) == ((0, 0), 0.0, False)


def test_transition_model_matches_step(classic) -> None:
    env, P, R = classic
    assert P.shape == (25, 5, 25) and R.shape == (25, 5)
    np.testing.assert_array_equal(P.sum(axis=2), 1.0)
    for s in range(env.n_states):
        for a in range(env.n_actions):
            env.state = s
            s_next, r, *_ = env.step(a)
            assert P[s, a, s_next] == 1.0 and R[s, a] == r


# ----------------------------------------------------------------- exact solvers
def test_solvers_agree(classic) -> None:
    _, P, R = classic
    v_vi, pi_vi = value_iteration(P, R, GAMMA)
    v_pi, pi_pi = policy_iteration(P, R, GAMMA)
    np.testing.assert_allclose(v_vi, v_pi, atol=1e-8)
    for pi in (pi_vi, pi_pi):
        np.testing.assert_allclose(policy_evaluation(P, R, one_hot(pi, 5), GAMMA), v_pi, atol=1e-8)
    # v* is a fixed point of the Bellman optimality operator, and greedy(q*) attains it
    q = q_from_v(P, R, v_pi, GAMMA)
    np.testing.assert_allclose(q.max(axis=1), v_pi, atol=1e-10)
    np.testing.assert_allclose(policy_evaluation(P, R, greedy(q), GAMMA), v_pi, atol=1e-8)


def test_target_value_is_geometric_series(classic) -> None:
    env, P, R = classic
    v, _ = policy_iteration(P, R, GAMMA)
    assert v[env.to_state(env.target)] == pytest.approx(1 / (1 - GAMMA), abs=1e-10)  # = 10


def test_one_by_two_uniform_policy_by_hand() -> None:
    # States s0=(0,0), s1=(0,1)=target; uniform policy over (up, right, down, left, stay).
    # s0: up/down/left hit the boundary (-1, stay), right → s1 (+1), stay → s0 (0):
    #     r_π(s0) = (-3 + 1 + 0)/5 = -0.4,  P_π(s0→s0) = 0.8, P_π(s0→s1) = 0.2
    # s1: up/right/down hit the boundary (-1, stay: the boundary penalty wins over the target),
    #     left → s0 (0), stay → s1 (+1):  r_π(s1) = (-3 + 0 + 1)/5 = -0.4, P_π(s1→s1) = 0.8, P_π(s1→s0) = 0.2
    # v0 = -0.4 + 0.9 (0.8 v0 + 0.2 v1),  v1 = -0.4 + 0.9 (0.2 v0 + 0.8 v1)
    # Subtracting: (v0 - v1)(1 - 0.9*0.6) = 0 → v0 = v1 = v, and v = -0.4 + 0.9 v → v = -4.
    env = GridWorld(size=(1, 2), forbidden=(), target=(0, 1))
    P, R = env.transition_model()
    v = policy_evaluation(P, R, np.full((2, 5), 0.2), GAMMA)
    np.testing.assert_allclose(v, [-4.0, -4.0], atol=1e-12)
    # and a non-symmetric one: always "right". s1 bumps the wall forever: v1 = -1/(1-0.9) = -10;
    # s0 enters the target once: v0 = 1 + 0.9 * v1 = -8.
    v = policy_evaluation(P, R, one_hot(np.array([RIGHT, RIGHT]), 5), GAMMA)
    np.testing.assert_allclose(v, [-8.0, -10.0], atol=1e-12)


# Zhao, "Mathematical Foundations of RL", ch. 3 example: 5x5, forbidden (1,1),(1,2),(2,2),(3,1),(3,3),(4,1),
# target (3,2) (0-indexed row, col), r_boundary = r_forbidden = -1, r_target = 1, γ = 0.9.
# The book's first row of v* is 5.8 5.6 6.2 6.5 5.8; our default layout reproduces it (so the layout matches).
# The other rows are this solver's output to one decimal, kept as a regression table; each is checkable by hand
# (e.g. v*(4,2) = 1 + 0.9*10 = 10 (step up into T), v*(4,1) = 0 + 0.9*10 = 9, v*(2,2) = 1 + 0.9*10 = 10: a forbidden
# cell is only penalised on entry, so leaving it into T pays +1).
BOOK_V_STAR = np.array([
    [5.8, 5.6, 6.2, 6.5, 5.8],
    [6.5, 7.2, 8.0, 7.2, 6.5],
    [7.2, 8.0, 10.0, 8.0, 7.2],
    [8.0, 10.0, 10.0, 10.0, 8.0],
    [7.2, 9.0, 10.0, 9.0, 8.1],
])


def test_classic_optimal_values_match_the_book(classic) -> None:
    _, P, R = classic
    v, _ = value_iteration(P, R, GAMMA)
    np.testing.assert_allclose(v.reshape(5, 5), BOOK_V_STAR, atol=0.051)
    np.testing.assert_array_equal(np.round(v.reshape(5, 5)[0], 1), [5.8, 5.6, 6.2, 6.5, 5.8])


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target=(1, 1)), r"target \(1, 1\) is also a forbidden cell"),
        (dict(target=(5, 0)), r"target \(5, 0\) is outside the 5x5 grid"),
        (dict(start=(0, -1)), r"start \(0, -1\) is outside"),
        (dict(forbidden=((1, 1), (2, 7))), r"forbidden cell \(2, 7\) is outside"),
        (dict(size=(0, 3), forbidden=(), target=(0, 0)), r"size must be positive"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(GridWorldError, match=match):
        GridWorld(**kwargs)
    assert issubclass(GridWorldError, ValueError)


# ----------------------------------------------------------------- rendering
def test_render_ansi_and_rgb() -> None:
    env = GridWorld(render_mode="ansi")
    env.reset()
    text = env.render()
    assert text.splitlines()[0].split() == ["A", ".", ".", ".", "."]
    assert text.splitlines()[3].split() == [".", "#", "T", "#", "."]

    env = GridWorld(render_mode="rgb_array")
    env.reset()
    img = env.render()
    assert img.shape == (5 * env.cell_px, 5 * env.cell_px, 3) and img.dtype == np.uint8


def test_render_policy_values(classic) -> None:
    env, P, R = classic
    v, pi = value_iteration(P, R, GAMMA)
    text = env.render_policy_values(pi, v)
    assert "10.0" in text and "5.8" in text and "○" in text
    assert set("↑→↓←") <= set(text)
    uniform = env.render_policy_values(np.full((25, 5), 0.2), mode="ansi")
    assert "↑→↓←○" in uniform

    for policy, values in [(pi, v), (one_hot(pi, 5), None), (None, v), (np.full((25, 5), 0.2), -v)]:
        img = env.render_policy_values(policy, values, mode="rgb_array")
        assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    # values shade the cells: the target cell (v = 10) is greener than the (0,0) cell (v = 5.8)
    img = env.render_policy_values(values=v, mode="rgb_array")
    k = env.cell_px
    red_of = lambda r, c: int(img[r * k + k // 2, c * k + k // 2, 0])  # noqa: E731  (greener = less red)
    assert red_of(3, 2) < red_of(2, 0) < red_of(0, 1)  # v* = 10 > 7.2 > 5.6 (the minimum)
    with pytest.raises(ValueError, match="mode"):
        env.render_policy_values(pi, v, mode="human")
