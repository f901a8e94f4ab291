"""rl.buffers: ring semantics, terminated/truncated kept apart, save/load, memory figure."""

import torch

from rl.buffers import ReplayBuffer, RolloutBuffer

SPEC = {"obs": ((2,), torch.float32), "reward": ((), torch.float32),
        "terminated": ((), torch.bool), "truncated": ((), torch.bool)}


def step(values, term=(False,), trunc=(False,)):
    n = len(values)
    return {"obs": torch.tensor([[v, -v] for v in values], dtype=torch.float32),
            "reward": torch.tensor(values, dtype=torch.float32),
            "terminated": torch.tensor(term * n if len(term) == 1 else term),
            "truncated": torch.tensor(trunc * n if len(trunc) == 1 else trunc)}


def test_ring_overwrites_oldest():
    buf = ReplayBuffer(4, SPEC)
    buf.add(step([1.0, 2.0, 3.0]))
    assert len(buf) == 3 and buf.pos == 3
    buf.add(step([4.0, 5.0]))  # wraps: 5 overwrites 1
    assert len(buf) == 4 and buf.pos == 1
    assert buf.data["reward"].tolist() == [5.0, 2.0, 3.0, 4.0]
    assert buf.data["obs"][0].tolist() == [5.0, -5.0]


def test_terminated_and_truncated_kept_apart():
    buf = ReplayBuffer(8, SPEC)
    buf.add(step([1.0, 2.0], term=(True, False), trunc=(False, True)))
    assert buf.data["terminated"][:2].tolist() == [True, False]
    assert buf.data["truncated"][:2].tolist() == [False, True]


def test_sample_uniform_from_filled_part():
    buf = ReplayBuffer(100, SPEC)
    buf.add(step([1.0, 2.0, 3.0]))
    torch.manual_seed(0)
    batch = buf.sample(3000)
    assert batch["reward"].shape == (3000,) and batch["obs"].shape == (3000, 2)
    counts = torch.bincount(batch["reward"].long(), minlength=4)[1:]
    assert counts.min() > 900  # ~1000 each: only the 3 stored items, uniformly
    assert list(buf.batches(5, 7)) and len(list(buf.batches(5, 7))) == 5


def test_save_load_round_trip(tmp_path):
    buf = ReplayBuffer(5, SPEC)
    buf.add(step([1.0, 2.0, 3.0, 4.0, 5.0, 6.0][:5]))
    buf.add(step([6.0, 7.0], term=(True, False), trunc=(False, True)))
    buf.save(tmp_path / "b.pt")
    loaded = ReplayBuffer.load(tmp_path / "b.pt")
    assert (loaded.pos, loaded.size, loaded.capacity) == (buf.pos, buf.size, buf.capacity)
    for k in SPEC:
        assert torch.equal(loaded.data[k], buf.data[k]) and loaded.data[k].dtype == buf.data[k].dtype
    torch.manual_seed(3)
    a = buf.sample(16)
    torch.manual_seed(3)
    b = loaded.sample(16)
    assert all(torch.equal(a[k], b[k]) for k in SPEC)


def test_halfcheetah_million_transitions_under_300_mb():
    # HalfCheetah-v5: obs 17, action 6, float32; plus reward and two flags.
    spec = {"obs": ((17,), torch.float32), "action": ((6,), torch.float32), "reward": ((), torch.float32),
            "next_obs": ((17,), torch.float32), "terminated": ((), torch.bool), "truncated": ((), torch.bool)}
    buf = ReplayBuffer(1_000_000, spec)
    assert buf.nbytes == 1_000_000 * (17 * 4 * 2 + 6 * 4 + 4 + 2) == 166_000_000
    assert buf.nbytes < 300 * 2**20


def test_rollout_buffer_yields_once_when_full():
    buf = RolloutBuffer(2, 3, {"reward": ((), torch.float32)})
    buf.add({"reward": torch.tensor([1.0, 2.0, 3.0])})
    assert not buf.full and list(buf.batches()) == []
    buf.add({"reward": torch.tensor([4.0, 5.0, 6.0])})
    (batch,) = list(buf.batches())
    assert batch["reward"].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert not buf.full and len(buf) == 0
