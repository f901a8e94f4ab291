"""rl.optim.WideAdam: PyTorch's fused Adam on flat pieces of each tensor must give bitwise its results."""

import copy

import pytest
import torch

from rl.optim import WideAdam, default_piece

# An ensemble weight, a bias, a tensor that is not a multiple of the piece, and one smaller than a piece.
SHAPES = [(3, 70, 40), (3, 1, 40), (1000,), (5,)]


def pair(piece: int, lr_groups: bool = False):
    g = torch.Generator().manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    wide = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    if lr_groups:  # QAC hands the optimizer two groups with their own learning rates
        groups = lambda ps: [{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:], "lr": 3e-2}]
        return ref, wide, torch.optim.Adam(groups(ref), lr=1e-3, fused=True), WideAdam(groups(wide), lr=1e-3,
                                                                                        piece=piece, capturable=False)
    return ref, wide, torch.optim.Adam(ref, lr=3e-3, fused=True), WideAdam(wide, lr=3e-3, piece=piece,
                                                                            capturable=False)


@pytest.mark.parametrize("piece,lr_groups", [(64, False), (128, True), (1 << 16, False), (None, True)])
def test_wide_adam_is_bitwise_fused_adam(piece, lr_groups):
    ref, wide, ref_opt, wide_opt = pair(piece, lr_groups)
    g = torch.Generator().manual_seed(1)
    for _ in range(7):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for ps, opt in ((ref, ref_opt), (wide, wide_opt)):
            for p, grad in zip(ps, grads):
                p.grad = grad.clone()
            opt.step()
    for a, b in zip(ref, wide):
        assert torch.equal(a, b)
        assert not torch.equal(a, torch.zeros_like(a))
    for a, b in zip(ref, wide):
        sa, sb = ref_opt.state[a], wide_opt.state[b]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert float(sa["step"]) == float(sb["step"]) == 7.0


def test_wide_adam_takes_fused_adams_state_dict_and_goes_on_alike():
    ref, wide, ref_opt, wide_opt = pair(64)
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        if step == 3:  # a checkpoint written by the one, read by the other
            with torch.no_grad():
                for a, b in zip(ref, wide):
                    b.copy_(a)
            wide_opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as a saved file would hold it
        for ps, opt in ((ref, ref_opt), (wide, wide_opt)):
            for p, grad in zip(ps, grads):
                p.grad = grad.clone()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, wide))


def test_the_default_piece_makes_about_one_launch_of_the_kernel():
    shapes = [(10, 256, 23), (10, 1, 256), (10, 256, 256), (10, 1, 256), (10, 1, 256), (10, 1, 1)]  # TD3's critics, K=5
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    piece = WideAdam(ps, lr=1e-3, capturable=False).piece_for(ps)
    assert piece == default_piece(sum(p.numel() for p in ps))
    views = sum(-(-p.numel() // piece) for p in ps)
    assert piece % 64 == 0 and 30 <= views <= 36  # multi_tensor_apply launches at most 36 tensors of 4 lists


def test_parameters_without_gradients_are_left_alone():
    ref, wide, _, wide_opt = pair(64)
    wide[0].grad = torch.ones_like(wide[0])
    wide_opt.step()
    assert not torch.equal(wide[0], ref[0])
    assert all(torch.equal(a, b) for a, b in zip(ref[1:], wide[1:]))
    assert len(wide_opt.state) == 1


@pytest.mark.parametrize("kwargs,match", [({"piece": 100}, "multiple of 64"), ({"piece": 0}, "multiple of 64")])
def test_bad_piece_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WideAdam([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, capturable=False, **kwargs)


def test_options_that_are_not_plain_adam_are_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = WideAdam([p], lr=1e-3, capturable=False)
    opt.param_groups[0]["weight_decay"] = 0.1
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="plain Adam"):
        opt.step()


def test_a_copy_keeps_its_piece_and_steps_alike():
    """Agents are deep-copied (the graphed = eager tests, the evaluator); Optimizer's own state keeps no extras."""
    _, wide, _, wide_opt = pair(64)
    twin = copy.deepcopy((wide, wide_opt))
    assert twin[1].piece == 64
    for ps, opt in ((wide, wide_opt), twin):
        for p in ps:
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(wide, twin[0]))
