"""rl.approximation against docs/algorithms.md §1, on hand-computed numbers."""

import math

import pytest
import torch

from rl.approximation import (ConstantStepSize, RobbinsMonroStepSize, StepSizeError, incremental_mean,
                              n_step_target, polyak_update, step_size, td_error, td_target)


def test_robbins_monro_values():
    a = RobbinsMonroStepSize(a0=2.0, p=1.0, k0=1.0)
    assert [a(k) for k in (1, 2, 3)] == [1.0, 2.0 / 3.0, 0.5]  # 2/(k+1)
    b = RobbinsMonroStepSize(a0=1.0, p=0.75)
    assert b(16) == pytest.approx(16 ** -0.75) == pytest.approx(0.125)


@pytest.mark.parametrize("p", [0.5, 0.3, 1.2, 0.0])
def test_convergent_schedule_rejects_bad_power(p):
    with pytest.raises(StepSizeError, match=r"0\.5 < p <= 1"):
        RobbinsMonroStepSize(a0=1.0, p=p)


def test_non_convergent_schedule_allowed_when_asked():
    assert RobbinsMonroStepSize(a0=1.0, p=0.5, convergent=False)(4) == 0.5


def test_constant_and_factory():
    assert ConstantStepSize(0.1)(1000) == 0.1
    assert isinstance(step_size("robbins_monro", a0=1.0, p=0.8), RobbinsMonroStepSize)
    with pytest.raises(StepSizeError):
        ConstantStepSize(-0.1)
    with pytest.raises(StepSizeError, match="unknown step-size"):
        step_size("adam")


def test_incremental_mean_with_1_over_k_is_the_sample_mean():
    xs = torch.tensor([3.0, 5.0, 10.0, -2.0])
    w = torch.tensor(0.0)
    for k, x in enumerate(xs, start=1):
        w = incremental_mean(w, x, 1.0 / k)
    assert w.item() == pytest.approx(4.0)  # (3 + 5 + 10 - 2) / 4


def test_incremental_mean_with_constant_step_is_an_ema():
    w = incremental_mean(torch.tensor(0.0), torch.tensor(10.0), 0.1)  # 0 - 0.1 (0 - 10) = 1
    w = incremental_mean(w, torch.tensor(10.0), 0.1)  # 1 - 0.1 (1 - 10) = 1.9
    assert w.item() == pytest.approx(1.9)


def test_td_target_bootstraps_through_truncation_not_termination():
    r = torch.tensor([1.0, 1.0])
    v_next = torch.tensor([5.0, 5.0])
    terminated = torch.tensor([False, True])
    y = td_target(r, v_next, terminated, gamma=0.9)
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 5.0, 1.0])
    assert td_error(torch.tensor([2.0, 2.0]), y).tolist() == pytest.approx([3.5, -1.0])


def test_n_step_target_matches_hand_sum():
    # rewards 1, 2, 3 then bootstrap v = 10, γ = 0.5: row 0 = 1 + .5*2 + .25*3 + .125*10 = 4.0
    r = torch.tensor([1.0, 2.0, 3.0])
    y = n_step_target(r, torch.tensor(10.0), torch.zeros(3, dtype=torch.bool), 0.5)
    assert y.tolist() == pytest.approx([4.0, 6.0, 8.0])
    # termination after the 2nd reward cuts the return: row 0 = 1 + .5*2 = 2
    y = n_step_target(r, torch.tensor(10.0), torch.tensor([False, True, False]), 0.5)
    assert y.tolist() == pytest.approx([2.0, 2.0, 8.0])


def test_polyak_update():
    target, source = [torch.tensor([0.0, 10.0])], [torch.tensor([1.0, 0.0])]
    polyak_update(target, source, tau=0.25)  # 0.25 * w + 0.75 * w'
    assert target[0].tolist() == pytest.approx([0.25, 7.5])


def test_robbins_monro_finds_root_of_noisy_function():
    # g(w) = w - 3 observed with N(0, 1) noise; RM with a_k = 1/k converges to w* = 3.
    gen = torch.Generator().manual_seed(0)
    a, w = RobbinsMonroStepSize(a0=1.0, p=1.0), 0.0
    for k in range(1, 20_001):
        w = w - a(k) * ((w - 3.0) + torch.randn((), generator=gen).item())
    assert math.isclose(w, 3.0, abs_tol=0.05)
