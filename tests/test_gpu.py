"""The GPU hot path: CUDA-graph updates equal eager ones, graph sampling follows the buffer, and nothing in
collect → store → update synchronizes with the host. Run on a CUDA machine: ``python -m pytest -m gpu``."""

import copy

import gymnasium as gym
import pytest
import torch

from agents.ddpg import DDPG, DDPGConfig
from agents.qac import A2C, QAC, A2CConfig, QACConfig
from rl.buffers import ReplayBuffer, RolloutBuffer
from rl.collector import TorchEnvCollector, transition_spec
from rl.logging import MetricAccumulator
from envs.torch_envs import make_torch_env

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

CUDA = torch.device("cuda")
OBS = gym.spaces.Box(-1, 1, (17,))
ACT = gym.spaces.Box(-1, 1, (6,))


def replay_batches(n: int, batch: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"obs": torch.randn(batch, 17, generator=g), "action": torch.rand(batch, 6, generator=g) * 2 - 1,
             "reward": torch.randn(batch, generator=g), "next_obs": torch.randn(batch, 17, generator=g),
             "terminated": torch.rand(batch, generator=g) < 0.1, "truncated": torch.rand(batch, generator=g) < 0.1}
            for _ in range(n)]


def to_cuda(batch: dict) -> dict:
    return {k: v.to(CUDA) for k, v in batch.items()}


def rollout_batch(g: torch.Generator, T: int = 5, N: int = 64) -> dict:
    """A random [T, N] CartPole-shaped rollout on the GPU (4-d observations, 2 actions)."""
    return to_cuda({"obs": torch.randn(T, N, 4, generator=g), "action": torch.randint(0, 2, (T, N), generator=g),
                    "reward": torch.ones(T, N), "next_obs": torch.randn(T, N, 4, generator=g),
                    "terminated": torch.rand(T, N, generator=g) < 0.05, "truncated": torch.rand(T, N, generator=g) < 0.02})


def params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])


@pytest.mark.parametrize("delay", [1, 2])
def test_graphed_ddpg_update_equals_eager(delay):
    # TD3's twin critics and delayed actor (two graphs: with and without the actor step); no target noise, so
    # the two runs see identical inputs and must agree to float32 rounding.
    cfg = DDPGConfig(twin_critics=True, policy_delay=delay)
    torch.manual_seed(0)
    eager = DDPG(OBS, ACT, cfg, CUDA)
    graphed = copy.deepcopy(eager)
    assert graphed.use_cuda_graphs()
    for i, batch in enumerate(replay_batches(24, 256)):
        a, b = eager.update(to_cuda(batch)), graphed.update(to_cuda(batch))
        assert set(a) == set(b), i
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"update {i}: {k}")
    assert graphed._graphed_update.graphs  # it really replayed graphs
    assert eager.num_updates == graphed.num_updates == 24
    torch.testing.assert_close(params(graphed), params(eager), rtol=1e-5, atol=1e-5)


def test_graphed_update_of_three_seeds_equals_eager():
    # K = 3 seeds as one batch (trainer.num_seeds): TD3 with target-policy noise drawn from each seed's own CUDA
    # generator inside the graphs (registered with them), both phases. The copy starts from the same generator
    # states, so eager and graphed updates draw the same noise and must agree to float32 rounding; the exploring
    # action (graphed too, the same generators) as well.
    cfg = DDPGConfig(twin_critics=True, policy_delay=2, target_policy_noise=0.2)
    eager = DDPG(OBS, ACT, cfg, CUDA, seeds=[0, 1, 2])
    graphed = copy.deepcopy(eager)
    assert graphed.use_cuda_graphs() and len(graphed.generators) == 3
    obs = torch.randn(3 * 4, 17, generator=torch.Generator().manual_seed(5)).to(CUDA)
    for i, batch in enumerate(replay_batches(24, 3 * 256)):
        a, b = eager.update(to_cuda(batch)), graphed.update(to_cuda(batch))
        assert set(a) == set(b) and all(v.shape == (3,) for v in a.values()), i
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"update {i}: {k}")
        torch.testing.assert_close(graphed.explore(obs)[0], eager.act(obs, explore=True)[0], rtol=1e-5, atol=1e-5)
    assert len(graphed._graphed_update.graphs) == 2 and graphed._graphed_act.graphs
    torch.testing.assert_close(params(graphed), params(eager), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(graphed.actor.net[0].weight[0], graphed.actor.net[0].weight[1])  # three agents


def copy_state_(dst: DDPG, src: DDPG) -> None:
    """Overwrite dst's weights, targets, Adam moments and noise generators with src's, in place (CUDA graphs hold
    the addresses). The banks of noise drawn ahead are not copied: both copies take the same draws in step."""
    with torch.no_grad():
        for d, s in zip(dst.state_dict().values(), src.state_dict().values()):
            d.copy_(s)
        for name in ("actor_opt", "critic_opt"):
            do, so = getattr(dst, name), getattr(src, name)
            for pd, ps in zip(do.param_groups[0]["params"], so.param_groups[0]["params"]):
                for k, v in so.state.get(ps, {}).items():
                    do.state[pd][k].copy_(v)
    for gd, gs in zip(dst.generators, src.generators):
        gd.set_state(gs.get_state())


def test_fused_and_graphed_update_of_three_seeds_equals_eager():
    # trainer.fuse (the losses compiled by TorchInductor: Triton kernels) under CUDA graphs, K = 3, both TD3 phases,
    # against the eager update from the same state, each update: equal to float rounding (inductor may order sums
    # differently; measured on an H200 2026-11-30: losses at most 2.4e-7 apart, weights 2.7e-6). The state is copied
    # before every update because two free-running copies drift apart: Adam divides rounding-sized gradient
    # differences by rounding-sized second moments (free-running, the actor losses differed by 1.7e-4 at update 19).
    cfg = DDPGConfig(twin_critics=True, policy_delay=2, target_policy_noise=0.2)
    eager = DDPG(OBS, ACT, cfg, CUDA, seeds=[0, 1, 2])
    fused = copy.deepcopy(eager)
    fused.fuse_losses()
    assert fused.use_cuda_graphs()
    for i, batch in enumerate(replay_batches(24, 3 * 256)):
        copy_state_(fused, eager)
        a, b = eager.update(to_cuda(batch)), fused.update(to_cuda(batch))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"update {i}: {k}")
        torch.testing.assert_close(params(fused), params(eager), rtol=1e-5, atol=1e-5, msg=f"update {i}: weights")
    assert len(fused._graphed_update.graphs) == 2 and not fused._graphed_update.failed


def test_sampled_update_graph_equals_separate_sampling_and_update():
    # Agent.sample_and_update: sampling from the replay buffer and the update replay as one graph (what the trainer
    # runs). From the same state (networks, optimizer, buffer contents and every generator), it draws the same
    # minibatches and noise as sampling then updating eagerly, for K = 3 seeds and both TD3 phases.
    cfg = DDPGConfig(twin_critics=True, policy_delay=2, target_policy_noise=0.2)
    eager = DDPG(OBS, ACT, cfg, CUDA, seeds=[0, 1, 2])
    spec = transition_spec(OBS, ACT)
    buffers = [ReplayBuffer(500, spec, CUDA, seeds=[0, 1, 2]) for _ in range(2)]
    for batch in replay_batches(4, 3 * 100, seed=3):
        for buf in buffers:
            buf.add(to_cuda(batch))
    graphed = copy.deepcopy(eager)
    assert graphed.use_cuda_graphs() and buffers[1].use_cuda_graphs()
    sums = [MetricAccumulator(), MetricAccumulator()]  # the graphed update sums its metrics inside its graph
    for i in range(16):
        a = eager.update(buffers[0].sample(64))
        sums[0].add(a)
        b = graphed.sample_and_update(buffers[1], 64, sums[1])
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"update {i}: {k}")
        if i in (9, 15):  # the means of updates 0-9 (warm-ups, captures, replays), then of 10-15 (replays only)
            eager_means, graphed_means = (s.means() for s in sums)
            assert graphed_means.keys() == eager_means.keys() == {"critic", "q_mean", "actor"}
            for k in eager_means:
                torch.testing.assert_close(torch.tensor(graphed_means[k]), torch.tensor(eager_means[k]), rtol=1e-5,
                                           atol=1e-5, msg=f"mean {k} after update {i}")
    assert len(graphed._graphed_sampled_update[0].graphs) == 2  # both phases replay from their graph
    torch.testing.assert_close(params(graphed), params(eager), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, cfg", [(A2C, A2CConfig()), (QAC, QACConfig())], ids=["a2c", "qac"])
def test_graphed_rollout_update_equals_eager(cls, cfg):
    # QAC draws a' ~ π(·|s') inside the update: with the CUDA generator reseeded before each update, a replayed
    # graph draws what the eager update draws (graph-safe RNG), so losses and parameters agree (A2C draws nothing).
    torch.manual_seed(0)
    eager = cls(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), cfg, CUDA)
    graphed = copy.deepcopy(eager)
    assert graphed.use_cuda_graphs()
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        batch = rollout_batch(g)
        torch.cuda.manual_seed(100 + i)
        a = eager.update(batch)
        torch.cuda.manual_seed(100 + i)
        b = graphed.update(batch)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"update {i}: {k}")
    assert graphed._graphed_update.graphs
    torch.testing.assert_close(params(graphed), params(eager), rtol=1e-5, atol=1e-5)


def test_graphed_sampling_follows_the_growing_buffer():
    buf = ReplayBuffer(1000, {"x": ((), torch.float32)}, CUDA)
    assert buf.use_cuda_graphs()
    buf.add({"x": torch.tensor([7.0])})
    for _ in range(5):  # warm-up calls, capture, replay
        assert buf.sample(64)["x"].unique().tolist() == [7.0]
    buf.add({"x": torch.arange(100, dtype=torch.float32)})  # the captured graph must see the new size
    drawn = torch.cat([buf.sample(512)["x"] for _ in range(20)])
    assert buf._graphed_sample.graphs and drawn.unique().numel() > 90 and (drawn <= 99).all()


def test_graphed_add_writes_what_the_eager_add_writes():
    # K = 3 rings of capacity 7, 2 rows per seed per add: the graphed add (device-side position) wraps around the
    # rings as the slice copies do, casts the float flags to the ring's bool, and keeps size and position in step.
    spec = {"x": ((2,), torch.float32), "done": ((), torch.bool)}
    eager, graphed = (ReplayBuffer(7, spec, CUDA, seeds=[0, 1, 2]) for _ in range(2))
    assert graphed.use_cuda_graphs()
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        flags = (torch.rand(6, generator=g) < 0.5).float()  # float, as the collector uploads them
        step = {"x": torch.randn(6, 2, generator=g).to(CUDA), "done": flags.to(CUDA)}
        eager.add(step)
        graphed.add(step)
        assert (graphed.pos, graphed.size) == (eager.pos, eager.size), i
        assert all(torch.equal(graphed.data[k], eager.data[k]) for k in spec), i
        assert graphed.size_on_device.item() == eager.size and graphed.pos_on_device.item() == eager.pos
    assert graphed._graphed_add.graphs  # past warm-up: the last adds replayed a captured graph


def test_collect_store_update_make_no_host_sync():
    # DDPG on GPU-batched Pendulum with graphs: a whole iteration runs with CUDA's sync debug mode set to error.
    env = make_torch_env("Pendulum-v1", 256, CUDA)
    agent = DDPG(env.single_observation_space, env.single_action_space, DDPGConfig(hidden_sizes=[64, 64]), CUDA)
    agent.use_cuda_graphs()
    storage = ReplayBuffer(10_000, transition_spec(env.single_observation_space, env.single_action_space), CUDA)
    storage.use_cuda_graphs()
    collector = TorchEnvCollector(env, seed=0)
    collector.collect(agent, storage, True)
    for _ in range(6):  # past warm-up and capture, which may synchronize once
        collector.collect(agent, storage, False)
        agent.update(storage.sample(128))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            collector.collect(agent, storage, False)
            agent.update(storage.sample(128))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert collector.pop_logs() is not None


def test_rollout_update_on_gpu_env_makes_no_host_sync():
    env = make_torch_env("CartPole-v1", 512, CUDA)
    agent = A2C(env.single_observation_space, env.single_action_space, A2CConfig(), CUDA)
    agent.use_cuda_graphs()
    storage = RolloutBuffer(5, 512, transition_spec(env.single_observation_space, env.single_action_space), CUDA)
    collector = TorchEnvCollector(env, seed=0)

    def iteration():
        for _ in range(5):
            collector.collect(agent, storage, False)
        for batch in storage.batches():
            agent.update(batch)

    for _ in range(5):
        iteration()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        iteration()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1", "MountainCarContinuous-v0"])
def test_graphed_env_step_equals_eager(env_id):
    # the env step (with its resets drawn from the env's own generator) replayed from a CUDA graph follows the
    # eager env exactly, through many autoresets
    eager, graphed = (TorchEnvCollector(make_torch_env(env_id, 512, CUDA, max_episode_steps=40), seed=3)
                      for _ in range(2))
    assert graphed.use_cuda_graphs()
    g = torch.Generator(device=CUDA).manual_seed(0)
    space = eager.act_space
    for t in range(200):
        if isinstance(space, gym.spaces.Discrete):
            action = torch.randint(0, int(space.n), (512,), device=CUDA, generator=g)
        else:
            action = torch.rand(512, 1, device=CUDA, generator=g) * 4 - 2
        a = eager._step(action)
        b = graphed._graphed_step(0, {"action": action})
        for x, y in zip(a, b):
            assert torch.equal(x, y), (env_id, t)
    assert graphed._graphed_step.graphs
    assert torch.equal(eager.finished, graphed.finished) and eager.finished[2] > 512


def test_pinned_asynchronous_uploads_store_what_the_host_saw():
    # VectorEnvCollector on CUDA uploads each transition through pinned buffers, without waiting for the GPU: the
    # buffer must hold exactly what the same collector stores on the CPU (random actions, episodes ending inside).
    from envs.make import make_vec_env
    from rl.collector import VectorEnvCollector
    from rl.config import EnvConfig

    stored = []
    for device in (torch.device("cpu"), CUDA):
        envs = make_vec_env(EnvConfig(name="pendulum", id="Pendulum-v1", num_envs=4, max_episode_steps=7))
        collector = VectorEnvCollector(envs, device, seeds=[0])
        storage = ReplayBuffer(100, transition_spec(envs.single_observation_space, envs.single_action_space), device)
        for _ in range(20):
            collector.collect(None, storage, True)
            torch.cuda._sleep(1_000_000)  # GPU work queued before the next upload: the host must not wait for it
        stored.append({k: v.cpu() for k, v in storage.data.items()})
        collector.close()
    for k in stored[0]:
        assert torch.equal(stored[0][k], stored[1][k]), k
    assert stored[1]["truncated"].sum() == 8  # 20 steps of 4 envs with episodes of 7 steps


@pytest.mark.parametrize("vectorization", ["sync", "shm"])
def test_update_queued_behind_the_action_equals_waiting_for_the_action(vectorization, monkeypatch):
    # trainer.overlap on CUDA: the update is queued behind the action's copy to the host, before the host waits for
    # it. Two seeds of TD3 with graphs must end exactly where the same run ends when the host first waits for the
    # action (a plain synchronous .cpu()), then launches the update.
    from agents.ddpg import DDPGConfig as Cfg
    from agents.base import build_agent
    from rl.collector import VectorEnvCollector
    from rl.config import BufferConfig, Config, EnvConfig, LoggerConfig, TrainerConfig
    from rl.trainer import Trainer

    def train() -> torch.Tensor:
        cfg = Config(agent=Cfg(name="td3", hidden_sizes=[64, 64], twin_critics=True, target_policy_noise=0.2,
                               policy_delay=2),
                     env=EnvConfig(name="pendulum", id="Pendulum-v1", num_envs=2, vectorization=vectorization),
                     buffer=BufferConfig(capacity=5000),
                     trainer=TrainerConfig(total_steps=700, learning_starts=200, eval_every=0, eval_episodes=1,
                                           checkpoint_every=0, progress=False, compile=True, overlap=True,
                                           num_seeds=2),
                     logger=LoggerConfig(tensorboard=False), seed=3, device="cuda")
        agent = build_agent(cfg)
        trainer = Trainer(cfg, agent, run_dir=None)
        trainer.run()
        trainer.close()
        return torch.cat([params(agent.actor), params(agent.critics)]).cpu()

    queued = train()
    monkeypatch.setattr(VectorEnvCollector, "_download", lambda self, action: (lambda a=action.cpu().numpy(): a))
    waited = train()
    assert torch.equal(queued, waited)


def test_wide_adam_in_a_cuda_graph_is_bitwise_fused_adam():
    """rl.optim.WideAdam (the hot path's Adam on CUDA) against torch's fused capturable Adam, both replayed from
    CUDA graphs, on TD3's critic shapes at 5 seeds (10 ensemble members of 23 → 256 → 256 → 1)."""
    from rl.optim import WideAdam

    shapes = [(10, 256, 23), (10, 1, 256), (10, 256, 256), (10, 1, 256), (10, 1, 256), (10, 1, 1)]
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) * 0.1 for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(5)]
    out = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=3e-4, fused=True, capturable=True),
                 lambda ps: WideAdam(ps, lr=3e-4)):
        ps = [torch.nn.Parameter(t.to(CUDA)) for t in init]
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt = make(ps)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the warm-up step creates Adam's state outside the capture
            opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        for gs in grads:
            for p, grad in zip(ps, gs):
                p.grad.copy_(grad)
            graph.replay()
        torch.cuda.synchronize()
        out.append((ps, opt))
    (ref, ref_opt), (wide, wide_opt) = out
    assert all(torch.equal(a, b) for a, b in zip(ref, wide))
    assert float(wide_opt.state[wide[2]]["step"]) == 6.0
    assert all(torch.equal(ref_opt.state[a]["exp_avg_sq"], wide_opt.state[b]["exp_avg_sq"]) for a, b in zip(ref, wide))
