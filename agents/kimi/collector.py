"""One trainer iteration's rollouts (docs/algorithms.md §4): prompts → k responses each → rewards → a batch.

Partial rollouts. Each iteration a rollout generates at most ``rollout_budget`` new tokens. A prompt's group of k
rollouts is trained in the iteration in which its last rollout finishes (EOS, ``max_response_tokens`` reached, or
repetition detected); until then the whole group waits in an ``rl.buffers.ReplayBuffer`` (prompt + response ids
so far, lengths, problem index), and the next iteration continues its unfinished rollouts first, with the
current policy. When trained, rollout j contributes ``log π_θ(y_j^cur | x, y_j^earlier)``: the summed log-probs of
the tokens it generated in *this* iteration (on-policy), conditioned on the prompt and its earlier segments. A
rollout that finished in an earlier iteration while its group waited has an empty current segment (log-prob 0, no
gradient) but its reward still counts in r̄ and in the length penalty. Rewards and lengths use the whole response.

Several processes (torchrun). Every rank draws the iteration's prompts from the same generator and takes its
share (a prompt's k responses stay on one rank); token t of response j of group g is drawn with the uniform
``u(seed, g·k + j, t)`` (``rl.lm.sampling.stream_uniforms``), so the responses do not depend on how the prompts are
split; the per-prompt success rates behind prioritized and curriculum sampling, and the logged statistics, are
gathered from all ranks, so they are the same on every rank.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from agents.kimi.losses import length_penalty
from agents.kimi.sampler import ProblemSampler
from rl.buffers import ReplayBuffer
from rl.lm.sampling import stream_uniforms

if TYPE_CHECKING:
    from agents.kimi.agent import Kimi


def repetition_ends(ids: Tensor, lengths: Tensor, max_ngram: int, min_repeats: int, start: Tensor) -> Tensor:
    """Per row of ids [B, L] (the first ``lengths`` tokens real): the smallest ``e > start`` such that ``ids[:e]``
    ends with some n-gram (n ≤ max_ngram) repeated ``min_repeats`` times in a row, else 0. A tail of m copies of an
    n-gram is exactly a run of ``n (m − 1)`` positions t with ``ids[t] == ids[t − n]``."""
    B, L = ids.shape
    best = torch.full((B,), L + 1, dtype=torch.long)
    if min_repeats < 2:
        return torch.zeros(B, dtype=torch.long)
    for n in range(1, min(max_ngram, L - 1) + 1):
        pos = torch.arange(n, L)
        eq = (ids[:, n:] == ids[:, :-n]) & (pos[None] < lengths[:, None])
        last_miss = torch.where(eq, torch.full_like(pos, n - 1)[None], pos[None]).cummax(dim=1).values
        hit = (pos[None] - last_miss >= n * (min_repeats - 1)) & (pos[None] + 1 > start[:, None])
        first = torch.where(hit.any(1), hit.long().argmax(1) + n + 1, L + 1)
        best = torch.minimum(best, first)
    return torch.where(best <= L, best, torch.zeros_like(best))


def first_repetition(ids: Sequence[int], max_ngram: int, min_repeats: int, start: int = 0) -> Optional[int]:
    """:func:`repetition_ends` of one sequence: the end of its first repeated tail after ``start``, or None."""
    if not ids:
        return None
    e = int(repetition_ends(torch.tensor([list(ids)]), torch.tensor([len(ids)]), max_ngram, min_repeats,
                            torch.tensor([start]))[0])
    return e or None


class IterationBatch:
    """Storage for one iteration's samples: ``batches()`` hands them over once, then forgets them."""

    def __init__(self) -> None:
        self.batch: dict[str, Tensor] | None = None

    def add(self, batch: dict[str, Tensor]) -> None:
        self.batch = batch

    def batches(self, num_updates: int = 1, batch_size: int = 0) -> Iterator[dict[str, Tensor]]:
        if self.batch is not None:
            batch, self.batch = self.batch, None
            yield batch

    def __len__(self) -> int:
        return 0 if self.batch is None else len(self.batch["reward"])

    def state_dict(self) -> dict:
        return {"batch": self.batch or {}}

    def load_state_dict(self, state: Mapping) -> None:
        self.batch = dict(state["batch"]) or None


@dataclass
class Rollout:
    ids: list[int]  # prompt + response so far
    prompt_len: int
    problem: int  # index into task.train
    group: int  # global group id (the same on every rank)
    j: int  # which of the group's k responses
    start: int  # where this iteration's segment begins (tokens before it are context)
    done: bool = False
    repeated: bool = False


SPEC = ("prompt_len", "length", "problem", "group", "j", "done", "repeated")


class LLMCollector:
    """One ``collect`` = one iteration's rollouts: continue this rank's waiting partial groups, take its share of new
    prompts, generate, score, and hand the finished groups to storage. Returns (responses trained on by all ranks,
    no episodes)."""

    def __init__(self, agent: "Kimi", task: Any, seed: int) -> None:
        cfg, group = agent.cfg, agent.group
        self.agent, self.task, self.cfg, self.group, self.seed = agent, task, cfg, group, seed
        self.share = cfg.prompts_per_iteration // group.world
        self.sampler = ProblemSampler([p.difficulty for p in task.train], cfg.prioritized, cfg.curriculum,
                                      cfg.unlock_every, cfg.unlock_pass_rate, cfg.success_step_size)
        spec = {"ids": ((agent.policy.context,), torch.long),
                **{k: ((), torch.bool if k in ("done", "repeated") else torch.long) for k in SPEC}}
        self.pending = ReplayBuffer(self.share * cfg.k, spec, "cpu")  # this rank's groups waiting to finish
        self.stats: dict[str, list[float]] = {}  # rollout statistics (over all ranks) and sample completions,
        self.texts: dict[str, str] = {}  # until logged
        self.rng = torch.Generator().manual_seed(seed)  # prompt sampling: the same draws on every rank
        self.iteration = self.next_group = 0

    # -- waiting groups --------------------------------------------------------------------------------
    def _take_pending(self) -> list[Rollout]:
        d = {k: v[: len(self.pending)].tolist() for k, v in self.pending.data.items()}
        self.pending.pos = self.pending.size = 0
        return [Rollout(ids[:n], p, prob, g, j, n, done, rep) for ids, p, n, prob, g, j, done, rep in
                zip(d["ids"], *(d[k] for k in SPEC))]

    def _put_pending(self, rollouts: list[Rollout]) -> None:
        width = self.agent.policy.context
        rows = {"ids": torch.tensor([r.ids + [0] * (width - len(r.ids)) for r in rollouts], dtype=torch.long),
                "length": torch.tensor([len(r.ids) for r in rollouts])}
        for k in ("prompt_len", "problem", "group", "j", "done", "repeated"):
            rows[k] = torch.tensor([getattr(r, k) for r in rollouts])
        self.pending.add(rows)

    # -- one iteration ---------------------------------------------------------------------------------
    def _new_prompts(self, waiting: int) -> list[tuple[int, int]]:
        """(problem index, group id) of this rank's new prompts: all ranks draw the iteration's new prompts at once
        and take consecutive shares, so that every rank has ``share`` groups in all."""
        wanted = self.group.all_gather(self.share - waiting)
        drawn = self.sampler.sample(sum(wanted), self.rng)
        offset = sum(wanted[: self.group.rank])
        mine = [(drawn[i], self.next_group + i) for i in range(offset, offset + wanted[self.group.rank])]
        self.next_group += len(drawn)
        return mine

    def collect(self, agent: "Kimi", storage: IterationBatch, random_actions: bool = False) -> tuple[int, list]:
        cfg, policy = self.cfg, agent.policy
        agent.ensure_warm(self.task)
        rollouts = self._take_pending()
        for index, g in self._new_prompts(len({r.group for r in rollouts})):
            prompt = policy.encode(self.task.train[index])
            rollouts += [Rollout(list(prompt), len(prompt), index, g, j, len(prompt)) for j in range(cfg.k)]
        active = [r for r in rollouts if not r.done]
        t0 = time.perf_counter()
        tokens = 0
        if active:
            budget = min(cfg.rollout_budget or cfg.max_response_tokens,
                         max(cfg.max_response_tokens - (len(r.ids) - r.prompt_len) for r in active),
                         policy.context - max(len(r.ids) for r in active))
            u = stream_uniforms(self.seed, [r.group * cfg.k + r.j for r in active],
                                [len(r.ids) - r.prompt_len for r in active], budget)
            with agent.full_weights():
                out = policy.generate([r.ids for r in active], budget, cfg.temperature, u)
            self._extend(active, out.sequences())  # one host sync for the whole batch
            tokens = int(out.lengths.sum())
        seconds = time.perf_counter() - t0
        # groups whose rollouts have all finished are trained now; the others wait
        groups: dict[int, list[Rollout]] = {}
        for r in rollouts:
            groups.setdefault(r.group, []).append(r)
        ready = [g for g in groups.values() if all(r.done for r in g)]
        waiting = [r for g in groups.values() if not all(r.done for r in g) for r in g]
        if waiting:
            self._put_pending(waiting)
        n = self._store(ready, storage, tokens, seconds)
        self.sampler.end_iteration()
        self.iteration += 1
        return n, []

    def _extend(self, active: list[Rollout], segments: list[list[int]]) -> None:
        """Append each new segment, cut what repeats (from the first repeated tail on), mark the finished."""
        cfg, eos = self.cfg, self.agent.policy.eos_id
        responses = [r.ids[r.prompt_len:] + seg[: cfg.max_response_tokens - (len(r.ids) - r.prompt_len)]
                     for r, seg in zip(active, segments)]
        width = max(map(len, responses))
        cuts = repetition_ends(torch.tensor([x + [-1] * (width - len(x)) for x in responses]),
                               torch.tensor([len(x) for x in responses]), cfg.repetition_ngram, cfg.repetition_repeats,
                               torch.tensor([len(r.ids) - r.prompt_len for r in active])).tolist()
        for r, response, cut in zip(active, responses, cuts):
            if cut:
                response, r.repeated = response[:cut], True
            r.ids = r.ids[: r.prompt_len] + response
            r.done = r.repeated or eos in response or len(response) >= cfg.max_response_tokens

    def _store(self, groups: list[list[Rollout]], storage: IterationBatch, tokens: int, seconds: float) -> int:
        """Score the finished groups, update the prompt statistics (all ranks'), store this rank's batch."""
        cfg, policy, task = self.cfg, self.agent.policy, self.task
        rows = [r for g in groups for r in g]
        texts = [policy.decode(r.ids[r.prompt_len:]) for r in rows]
        scores = [task.score(task.train[r.problem], t) if not r.repeated else (0.0, 0.0, 0) for r, t in zip(rows, texts)]
        correct = torch.tensor([s[0] for s in scores]).view(-1, cfg.k)
        repeated = torch.tensor([r.repeated for r in rows], dtype=torch.bool).view(-1, cfg.k)
        lengths = torch.tensor([len(r.ids) - r.prompt_len for r in rows], dtype=torch.float32).view(-1, cfg.k)
        weight = cfg.length_penalty if self.iteration >= cfg.length_penalty_warmup else 0.0
        reward = (torch.where(repeated, -cfg.repetition_penalty, torch.tensor([s[1] for s in scores]).view(-1, cfg.k))
                  + length_penalty(lengths, correct > 0, weight))
        mine = {"updates": [(g[0].problem, s) for g, s in zip(groups, correct.mean(1).tolist())],
                "sums": [len(rows), float(correct.sum()), float(reward.sum()), float(lengths.sum()),
                         float(repeated.sum()), float(sum(s[2] for s in scores)), float(tokens)],
                "seconds": seconds}
        everyone = self.group.all_gather(mine)
        for part in everyone:  # every rank applies every rank's results, in rank order
            for problem, success in part["updates"]:
                self.sampler.update(problem, success)
        total, hits, rewards, length, rep, errors, toks = (sum(p["sums"][i] for p in everyone) for i in range(7))
        gen_seconds = max(p["seconds"] for p in everyone)
        self._add_stats({"tokens_per_s": toks / max(gen_seconds, 1e-9)})
        if total == 0:
            return 0
        self._add_stats({"accuracy": hits / total, "reward_mean": rewards / total, "response_length_mean": length / total,
                         "repeated_fraction": rep / total, "reward_errors": errors})
        width = max((len(r.ids) for r in rows), default=2)
        storage.add({"ids": torch.tensor([r.ids + [policy.pad_id] * (width - len(r.ids)) for r in rows],
                                         dtype=torch.long).view(len(rows), width),
                     "start": torch.tensor([r.start for r in rows], dtype=torch.long),
                     "end": torch.tensor([len(r.ids) for r in rows], dtype=torch.long),
                     "reward": reward.flatten(), "total": torch.tensor(int(total))})
        shown = [f"    {task.train[r.problem].prompt} → {t!r}  (reward {float(x):+.2f})"
                 for r, t, x in zip(rows[:: cfg.k][:4], texts[:: cfg.k][:4], reward[:, 0][:4])]
        if shown:
            self.texts["llm/samples"] = "\n".join(shown)  # indented: TensorBoard renders it as a code block
        return int(total)

    def _add_stats(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.stats.setdefault(k, []).append(v)

    def pop_logs(self) -> tuple[dict[str, float], dict[str, str]]:
        """What the trainer logs at each log step: ``llm/*`` scalars (means since the last call: the rollout
        statistics of all ranks and the learner's ``agent.llm_stats``) and ``llm/samples`` text."""
        means = {k: sum(v) / len(v) for k, v in self.stats.items()}
        if "reward_errors" in self.stats:
            means["reward_errors"] = sum(self.stats["reward_errors"])  # a count since the last log, not a mean
        scalars = {f"llm/{k}": v for k, v in {**means, **self.agent.llm_stats.means()}.items()}
        if "llm/reward_mean" in scalars:  # a response is a one-step episode (TextTaskEnv): its return is its reward
            scalars["charts/episodic_return"] = scalars["llm/reward_mean"]
        self.stats, texts, self.texts = {}, self.texts, {}
        return scalars, texts

    def state_dict(self) -> dict:
        """The waiting groups of every rank (gathered: a resumed run may have another number of ranks) and the
        prompt sampler's state (the same on every rank)."""
        n = len(self.pending)
        waiting = {k: v[:n].clone() for k, v in self.pending.data.items()}
        gathered = self.group.all_gather(waiting)
        return {"sampler": self.sampler.state_dict(), "rng": self.rng.get_state(), "iteration": self.iteration,
                "next_group": self.next_group,
                "pending": {k: torch.cat([g[k] for g in gathered]) for k in waiting}}

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.rng.set_state(state["rng"])
        self.iteration, self.next_group = int(state["iteration"]), int(state["next_group"])
        pending = state["pending"]
        self.pending.pos = self.pending.size = 0
        if len(pending["group"]):  # deal the waiting groups out to the ranks, whole groups, in order
            groups = sorted(set(pending["group"].tolist()))
            mine = set(groups[self.group.rank:: self.group.world])
            keep = torch.tensor([g in mine for g in pending["group"].tolist()])
            if keep.any():
                self.pending.add({k: v[keep] for k, v in pending.items()})

    def close(self) -> None:
        pass
