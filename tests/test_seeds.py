"""K seeds as one batch (trainer.num_seeds): K = 3 batched is three single-seed runs, exactly — parameters,
optimizer moments, target networks, evaluations — also when the batched run is interrupted and resumed; each seed
logs its own TensorBoard run; the ensemble layer is K independent nn.Linear layers."""

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents import DDPG
from agents.base import build_agent
from agents.ddpg import DDPGConfig
from rl import seeding
from rl.buffers import ReplayBuffer
from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
from rl.networks import EnsembleLinear
from rl.trainer import Trainer

SEED, K = 4, 3


def td3_config(seed: int, num_seeds: int, total_steps: int = 2000, **trainer) -> Config:
    """TD3 (twin critics, target-policy noise, delayed actor: every random stream is used) on Pendulum with short
    episodes (autoresets inside the run), 4 envs per seed, an update every 4 env steps, an evaluation and a
    checkpoint every 1,000 steps."""
    t = dict(total_steps=total_steps, learning_starts=400, utd_ratio=0.25, batch_size=32, eval_every=1000,
             eval_episodes=2, log_every=500, checkpoint_every=1000, progress=False, num_seeds=num_seeds, **trainer)
    agent = DDPGConfig(name="td3", hidden_sizes=[32, 32], twin_critics=True, target_policy_noise=0.2, policy_delay=2)
    return Config(agent=agent, env=EnvConfig(num_envs=4, max_episode_steps=150), buffer=BufferConfig(capacity=3000),
                  trainer=TrainerConfig(**t), logger=LoggerConfig(), seed=seed, device="cpu")


def train(cfg: Config, run_dir, resume_at: int | None = None) -> tuple[DDPG, dict]:
    """Train as ``cfg`` says; with ``resume_at``: stop there, then continue in a fresh process-like setting (new
    agent, trainer and envs from the checkpoint)."""
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir)
    if resume_at is not None:
        trainer.run(resume_at)
        trainer.close()
        torch.manual_seed(12345)  # the resumed run must not depend on the state of torch's global generator
        agent = build_agent(cfg)
        trainer = Trainer(cfg, agent, run_dir)
        trainer.load_checkpoint(run_dir)
    result = trainer.run()
    trainer.close()
    return agent, result


def tensors(agent: DDPG) -> dict[str, torch.Tensor]:
    """Every parameter, target network and Adam moment of the agent (leading axis: the ensemble's members)."""
    out = dict(agent.state_dict())
    for name, opt in agent.optimizers().items():
        for i, p in enumerate(opt.param_groups[0]["params"]):
            out.update({f"{name}.{i}.{k}": v for k, v in opt.state[p].items() if v.dim() > 0})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    singles = [train(td3_config(SEED + k, 1), tmp / f"single_{k}") for k in range(K)]
    batched = train(td3_config(SEED, K), tmp / "batched", resume_at=1000)
    return singles, batched, tmp


def test_batched_seeds_equal_single_runs(runs):
    singles, (batched, result), _ = runs
    got = tensors(batched)
    for k, (single, single_result) in enumerate(singles):
        for name, value in tensors(single).items():
            mine = got[name]
            if mine.shape != value.shape:  # a member axis: seed k's members are k·c … (k+1)·c − 1 (c twin critics)
                c = value.shape[0]
                mine = mine[k * c:(k + 1) * c]
            torch.testing.assert_close(mine, value, rtol=0, atol=1e-5, msg=f"seed {SEED + k}: {name}")
        assert result["return_mean"][k] == pytest.approx(single_result["return_mean"], abs=1e-3)
    assert batched.num_updates == singles[0][0].num_updates == (2000 - 400) // 4 + 1  # updates from step 400 on
    assert result["step"] == 2000 and len(result["return_mean"]) == K


def test_each_seed_logs_its_own_run(runs):
    singles, _, tmp = runs
    for k in range(K):
        ours = EventAccumulator(str(tmp / "batched" / f"seed_{SEED + k}"), size_guidance={"scalars": 0})
        ours.Reload()
        single = EventAccumulator(str(tmp / f"single_{k}"), size_guidance={"scalars": 0})
        single.Reload()
        assert set(ours.Tags()["scalars"]) == set(single.Tags()["scalars"]) >= {"losses/critic", "eval/return_mean"}
        for tag in ("charts/episodic_return", "eval/return_mean"):
            a, b = ours.Scalars(tag), single.Scalars(tag)
            assert [e.step for e in a] == [e.step for e in b] and np.allclose([e.value for e in a],
                                                                              [e.value for e in b], atol=1e-3), tag
    assert sorted(p.name for p in (tmp / "batched").glob("checkpoint-*.pt")) == [
        "checkpoint-1000.buffer.pt", "checkpoint-1000.pt", "checkpoint-2000.buffer.pt", "checkpoint-2000.pt"]


def test_ensemble_layer_is_k_independent_linear_layers():
    gens = seeding.generators([7, 8], "init")
    layer = EnsembleLinear(5, 3, gens)
    singles = []
    for s in (7, 8):
        torch.manual_seed(s)  # nn.Linear initializes from torch's global generator: the "init" stream of seed s
        singles.append(torch.nn.Linear(5, 3))
    x = torch.randn(2, 4, 5)
    for k, lin in enumerate(singles):
        assert torch.equal(layer.weight[k], lin.weight) and torch.equal(layer.bias[k, 0], lin.bias)
        torch.testing.assert_close(layer(x)[k], lin(x[k]))
    one_output = EnsembleLinear(5, 1, gens)  # the dot-product path
    torch.testing.assert_close(one_output(x)[1], x[1] @ one_output.weight[1].T + one_output.bias[1])


def test_replay_buffer_samples_each_seed_from_its_own_ring():
    def filled(seeds):  # 4 adds of 2 transitions per seed; seed s's transitions are 100 s + 0 … 7
        buf = ReplayBuffer(10, {"x": ((), torch.float32)}, seeds=seeds)
        for t in range(4):
            buf.add({"x": torch.tensor([100.0 * s + 2 * t + j for s in seeds for j in range(2)])})
        return buf

    batched, single = filled([0, 1, 2]), filled([1])
    draws = batched.sample(50)["x"].view(3, 50)
    assert torch.equal(draws[1], single.sample(50)["x"])  # seed 1's block: what seed 1 alone draws
    for k in range(3):
        assert set(draws[k].tolist()) <= {100.0 * k + i for i in range(8)} and len(set(draws[k].tolist())) > 4
    twin = ReplayBuffer(10, {"x": ((), torch.float32)}, seeds=[7, 8, 9])  # other seeds: the saved state decides
    twin.load_state_dict(batched.state_dict())
    assert torch.equal(twin.sample(9)["x"], batched.sample(9)["x"])


def test_bank_hands_out_each_seeds_generator_draws_in_blocks_and_resumes():
    """rl.seeding.Bank: use j of seed k is row j mod 64 of block j // 64 drawn from seed k's generator (a function of
    that generator alone, whatever K is); its state taken mid-block continues exactly."""
    gens = seeding.generators([3, 4], "noise")
    bank = seeding.Bank(gens, (5,), normal=True)
    got = torch.stack([bank.take() for _ in range(100)], dim=1)  # [K, 100, 5]
    again = seeding.generators([3, 4], "noise")
    want = torch.stack([torch.cat([torch.randn((64, 5), generator=g) for _ in range(2)])[:100] for g in again])
    assert torch.equal(got, want)
    one = seeding.Bank(seeding.generators([4], "noise"), (5,), normal=True)  # seed 4 alone: its row of the batch
    assert torch.equal(torch.stack([one.take() for _ in range(100)], dim=1)[0], got[1])
    state, gen_state = bank.state(), seeding.get_states(gens)
    follow = [bank.take() for _ in range(40)]  # crosses the next block boundary
    fresh_gens = seeding.generators([3, 4], "noise")
    seeding.set_states(fresh_gens, gen_state)
    banks: dict = {}
    seeding.load_banks(banks, fresh_gens, {"b": {**state, "shape": [5], "normal": True, "dtype": "float32"}})
    assert all(torch.equal(banks["b"].take(), f) for f in follow)
    uniform = seeding.Bank(seeding.generators([3], "replay"), (7,), normal=False, dtype=torch.float64).take()
    assert uniform.dtype == torch.float64 and uniform.shape == (1, 7) and ((0 <= uniform) & (uniform < 1)).all()


def test_cli_trains_k_seeds_and_reports_their_mean(tmp_path):
    """``python -m rl.train agent=td3 env=pendulum trainer.num_seeds=2`` (here on shm worker processes, as on the
    device): exit 0, one TensorBoard run per seed, the final line lists each seed's return; the value a sweeper
    maximizes is the mean over the seeds."""
    from tests.conftest import TINY, run_cli

    out = run_cli("agent=td3", "env=pendulum", "trainer.num_seeds=2", "env.vectorization=shm", *TINY,
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "run").glob("seed_*")) == ["seed_0", "seed_1"]
    done = [line for line in out.stdout.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and "return_mean=[" in done[0], out.stdout[-1000:]
