"""Kimi's notebook API and its evaluation (the counterpart of agents/api.py for text): build from a task, sample,
score held-out problems, predict, export, load. A mixin of :class:`agents.kimi.agent.Kimi`.

    agent = Kimi.from_task("arithmetic", device="cpu", task_kwargs={"max_digits": 4})
    agent.learn(5_000)            # samples (responses); the first call SFT-warm-starts a fresh TinyLM
    agent.evaluate()              # held-out greedy accuracy and mean response length
    agent.predict("37+85=")       # '7+5+0=12;3+8+1=12;=122'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from agents.kimi.config import KimiConfig, LoRAConfig
from agents.kimi.policies import task_alphabet
from rl import checkpoint
from rl.config import BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig, check, from_yaml
from rl.lm.sampling import stream_uniforms
from rl.trainer import resolve_device

EVAL_SEED = 12_345  # the draws of held-out sampled accuracy (the same problems get the same draws every evaluation)


class KimiAPI:
    """Sampling, held-out evaluation and the notebook API, over the agent's ``policy``, ``cfg``, ``group``,
    ``full_weights()`` and ``run_config``."""

    # -- sampling and evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, problems: Sequence[Any], n: int = 1, temperature: float | None = None, batch_size: int = 256,
               seed: int | None = None) -> list[list[str]]:
        """``n`` responses (text) per problem (a Problem or a prompt string); ``temperature=0`` is greedy (default:
        the config's). ``seed`` fixes the draws (default: fresh ones)."""
        t = self.cfg.temperature if temperature is None else temperature
        prompts = [self.policy.encode(p) for p in problems for _ in range(n)]
        texts: list[str] = []
        with self.full_weights():
            for i in range(0, len(prompts), batch_size):
                chunk = prompts[i:i + batch_size]
                u = None if seed is None else stream_uniforms(seed, range(i, i + len(chunk)), [0] * len(chunk),
                                                              self.cfg.max_response_tokens)
                out = self.policy.generate(chunk, self.cfg.max_response_tokens, t, u)
                texts += [self.policy.decode(s) for s in out.sequences()]
        return [texts[i * n:(i + 1) * n] for i in range(len(problems))]

    @torch.no_grad()
    def held_out(self, task: Any, limit: int = 0, batch_size: int = 256) -> dict[str, float]:
        """On the first ``limit`` (default ``eval_problems``; 0: all) problems of the task's test split: greedy
        ``accuracy``, mean response length (tokens, EOS counted) and that of the correct responses; and
        ``sampled_accuracy``, one response per problem sampled as in training (the same draws every time).
        Under torchrun each rank evaluates its share of the problems."""
        problems = task.test[: limit or self.cfg.eval_problems or None]
        mine = list(range(self.group.rank, len(problems), self.group.world))
        n_tok = self.cfg.max_response_tokens
        hits = sampled = length = correct_length = 0.0
        with self.full_weights():
            for i in range(0, len(mine), batch_size):
                idx = mine[i:i + batch_size]
                prompts = [self.policy.encode(problems[j]) for j in idx]
                out = self.policy.generate(prompts, n_tok, 0.0)
                for j, s, n in zip(idx, out.sequences(), out.lengths.tolist()):
                    ok = task.reward(problems[j], self.policy.decode(s))
                    hits, length, correct_length = hits + ok, length + n, correct_length + n * (ok > 0)
                out = self.policy.generate(prompts, n_tok, self.cfg.temperature,
                                           stream_uniforms(EVAL_SEED, idx, [0] * len(idx), n_tok))
                sampled += sum(task.reward(problems[j], self.policy.decode(s)) for j, s in zip(idx, out.sequences()))
        parts = self.group.all_gather((hits, sampled, length, correct_length, sum(1 for _ in mine)))
        hits, sampled, length, correct_length, count = (sum(p[i] for p in parts) for i in range(5))
        return {"accuracy": hits / count, "response_length_mean": length / count,
                "correct_length_mean": correct_length / hits if hits else 0.0, "sampled_accuracy": sampled / count}

    # -- notebook API ----------------------------------------------------------------------------------
    @classmethod
    def from_task(cls, task: Any = "arithmetic", device: str = "auto", seed: int = 0,
                  task_kwargs: Mapping[str, Any] | None = None, **hyperparameters: Any) -> Any:
        """A Kimi agent for a shipped task (by name, with ``task_kwargs``) or any Task object (e.g. a CustomTask)."""
        name = task if isinstance(task, str) else task.name
        if not isinstance(task, str) and hyperparameters.get("policy", "tiny") == "tiny" and "chars" not in hyperparameters:
            hyperparameters["chars"] = task_alphabet(task)  # a fresh TinyLM that can spell the task's text
        if isinstance(hyperparameters.get("lora"), Mapping):
            hyperparameters["lora"] = LoRAConfig(**hyperparameters["lora"])
        cfg = Config(agent=KimiConfig(**hyperparameters), env=EnvConfig(name=name, id=name, kwargs=dict(task_kwargs or {})),
                     buffer=BufferConfig(), trainer=TrainerConfig(), logger=LoggerConfig(), seed=seed, device=device)
        torch.manual_seed(seed)
        agent = cls(None, None, cfg.agent, resolve_device(device))
        agent.run_config = cfg
        if not isinstance(task, str):
            agent.task = task
        return agent

    @classmethod
    def from_env(cls, env: str, device: str = "auto", seed: int = 0, num_envs: int = 1, **hyperparameters: Any) -> Any:
        return cls.from_task(env, device=device, seed=seed, **hyperparameters)

    def evaluate(self, episodes: int = 0) -> dict[str, float]:
        """Held-out greedy accuracy and response lengths (``episodes``: how many test problems; 0 = all)."""
        if self.run_config is None:
            raise ConfigError("this agent has no task: build it with Kimi.from_task(...) or load(...)")
        task = self.get_task(self.run_config)
        self.ensure_warm(task)
        return self.held_out(task, limit=episodes)

    def predict(self, prompt: str | Sequence[str], deterministic: bool = True) -> str | list[str]:
        """The response to one prompt (or a list of them): greedy, or sampled with ``deterministic=False``."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [r[0] for r in self.sample(prompts, 1, 0.0 if deterministic else None)]
        return texts[0] if isinstance(prompt, str) else texts

    def export(self, path: str | Path, merge: bool = True) -> Path:
        """A Hugging Face model directory of this policy (``policy=hf``; LoRA adapters merged unless ``merge=False``)."""
        check(self.cfg.policy == "hf", "export writes a Hugging Face model: it needs agent.policy=hf (a TinyLM saves "
                                       "with save_pretrained)")
        with self.full_weights():
            return self.policy.export(path, merge)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Any:
        """Load what :meth:`save` or the trainer wrote (a run directory: its newest complete checkpoint)."""
        state = checkpoint.load_newest(path).state
        cfg = replace(from_yaml(state["config"]), device=device)
        if not isinstance(cfg.agent, KimiConfig):
            raise ConfigError(f"{path} holds a {cfg.agent.name} agent, not kimi")
        agent = cls(None, None, cfg.agent, resolve_device(device))
        agent.run_config = cfg
        agent.load_state(state["agent"])
        return agent
