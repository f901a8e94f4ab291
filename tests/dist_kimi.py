"""A Kimi run for tests/test_distributed.py: alone (``python tests/dist_kimi.py OUT MODE``) or one rank of a
torchrun run. ``learn`` of 2 iterations (TinyLM after a short SFT warm start, 4 prompts × k = 2 each, 2 gradient steps
per iteration; the brevity reward makes every group's rewards differ); rank 0 writes the whole (gathered) parameters and the logged statistics to OUT. MODE: ddp | fsdp."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.kimi import Kimi  # noqa: E402
from rl import distributed  # noqa: E402

SETTINGS = dict(d_model=32, n_layers=2, n_heads=2, context=32, sft_steps=20, sft_batch_size=16, k=2,
                prompts_per_iteration=4, max_response_tokens=12, grad_steps=2, lr=1e-3, repetition_repeats=0)


def main(out: str, mode: str) -> None:
    torch.set_num_threads(1)
    group = distributed.init("cpu")
    task = {"max_digits": 2, "num_train": 200, "num_test": 8, "rewards": {"correct": 1.0, "brevity": 1.0}}
    agent = Kimi.from_task("arithmetic", device="cpu", task_kwargs=task, fsdp=mode == "fsdp", **SETTINGS)
    logs = []
    collector_logs = agent.make_collector  # record what the trainer logs (the same on every rank)

    def make_collector(cfg):
        collector = collector_logs(cfg)
        pop = collector.pop_logs
        collector.pop_logs = lambda: (lambda r: (logs.append(r[0]), r)[1])(pop())
        return collector

    agent.make_collector = make_collector
    agent.learn(16, progress=False, eval_every=0, log_every=8)
    state = agent.state()["modules"]
    if group.main:
        torch.save({"params": state, "logs": logs, "world": group.world}, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
