"""Kimi-style LLM policy optimization: the pure math on hand-computed numbers (loss and its gradient, length
penalty, DPO), long2short tools, repetition detection, the problem sampler, partial rollouts, bad input, the
Hugging Face path, an end-to-end run through rl.train with its TensorBoard tags, and the notebook API."""

import copy
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from agents.kimi import (Kimi, KimiConfig, LLMCollector, IterationBatch, ProblemSampler, dpo_loss, dpo_pairs,
                         first_repetition, kimi_loss, length_penalty, merge_weights, segment_logprobs,
                         shortest_rejection_sampling)
from envs.text_tasks import ArithmeticTask, CustomTask, Problem, exact_match
from rl.approximation import incremental_mean
from rl.config import BufferConfig, Config, ConfigError, EnvConfig, LoggerConfig, TrainerConfig
from rl.lm import CharTokenizer, TinyLM, TinyLMConfig, token_logprobs
from rl.logging import MetricAccumulator

torch.set_num_threads(1)
TOK = CharTokenizer()
SMALL_TASK = {"max_digits": 2, "num_train": 200, "num_test": 24}
TINY = dict(d_model=32, n_layers=1, n_heads=2, context=32, sft_steps=30, sft_batch_size=16, k=2,
            prompts_per_iteration=4, max_response_tokens=24, grad_steps=2, lr=1e-3)


def T(*x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# ------------------------------------------------------------------------------------------- the loss

def test_kimi_loss_hand_computed():
    # one group of k=2: r = (1, 0), r̄ = 0.5; log-ratios (−1 − (−1.5), −2 − (−2)) = (0.5, 0); τ = 0.5
    # residuals: 1 − .5 − .5·.5 = .25 and 0 − .5 − 0 = −.5  →  L = (.0625 + .25)/2 = .15625
    logp = T(-1.0, -2.0).requires_grad_()
    loss, m = kimi_loss(logp, T(-1.5, -2.0), T(1.0, 0.0), tau=0.5, k=2)
    assert loss.item() == pytest.approx(0.15625)
    assert m["policy"].item() == pytest.approx(0.15625) and m["log_ratio_sq"].item() == pytest.approx(0.125)
    loss.backward()
    # ∂L/∂log π_j = (1/k) · 2 · residual_j · (−τ)  →  (−.125, .25)
    assert logp.grad.tolist() == pytest.approx([-0.125, 0.25])
    # two groups: the mean over prompts of each group's mean
    loss2, _ = kimi_loss(T(-1.0, -2.0, 0.0, 0.0), T(-1.5, -2.0, 0.0, 0.0), T(1.0, 0.0, 1.0, 1.0), tau=0.5, k=2)
    assert loss2.item() == pytest.approx(0.15625 / 2)  # the second group: r = r̄, ratio 0 → 0
    with pytest.raises(RuntimeError):
        kimi_loss(T(1.0, 2.0, 3.0), T(0.0, 0.0, 0.0), T(1.0, 0.0, 1.0), 0.1, 2)  # not a multiple of k


def policy_logp(theta: torch.Tensor, seqs: list[list[int]]) -> torch.Tensor:
    """log π(y) of token sequences under a context-free softmax policy with logits θ (a stand-in for an LM)."""
    logp = torch.log_softmax(theta, -1)
    return torch.stack([logp[s].sum() for s in seqs])


@pytest.mark.parametrize("at_reference", [True, False])
def test_kimi_loss_gradient_is_minus_2tau_times_the_section4_form(at_reference):
    torch.manual_seed(0)
    seqs = [[0, 1, 2], [2, 2], [1], [3, 0, 0, 1], [0], [2, 3]]  # two prompts × k = 3
    rewards, tau, k = T(1.0, 0.0, 1.0, 0.0, 0.0, 1.0), 0.3, 3
    theta_ref = torch.randn(4, dtype=torch.float64)
    theta = (theta_ref if at_reference else theta_ref + 0.5 * torch.randn(4, dtype=torch.float64)).clone()
    theta.requires_grad_()
    ref = policy_logp(theta_ref, seqs).detach()
    loss, _ = kimi_loss(policy_logp(theta, seqs), ref, rewards, tau, k)
    (grad_loss,) = torch.autograd.grad(loss, theta)
    # §4: per prompt (1/k) Σ_j [∇ log π(y_j) (r_j − r̄) − (τ/2) ∇ (log π(y_j) − log π_ref(y_j))²], mean over prompts
    logp = policy_logp(theta, seqs)
    adv = (rewards.view(-1, k) - rewards.view(-1, k).mean(1, keepdim=True)).flatten()
    section4 = ((logp * adv).view(-1, k).sum(1) / k - (tau / 2) * (logp - ref).pow(2).view(-1, k).sum(1) / k).mean()
    (g4,) = torch.autograd.grad(section4, theta)
    assert torch.allclose(grad_loss, -2 * tau * g4, atol=1e-12)
    if at_reference:  # the l2 term vanishes at θ = θ_i: a policy gradient with the mean-reward baseline
        (pg,) = torch.autograd.grad(((policy_logp(theta, seqs) * adv).view(-1, k).sum(1) / k).mean(), theta)
        assert torch.allclose(grad_loss, -2 * tau * pg, atol=1e-12)
    else:
        assert (logp - ref).abs().max() > 0.1  # ... and here it does not vanish, yet the identity holds


def test_segment_logprobs_matches_token_logprobs():
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(TOK.vocab_size, d_model=32, n_layers=1, n_heads=2, max_len=32)).double()
    context, segment = [TOK.encode("12+3=", add_bos=True) + TOK.encode("2+3"), TOK.encode("9+9=", add_bos=True)], \
        [TOK.encode("+0=05;"), TOK.encode("9+9+0=18;")]
    rows = [c + s for c, s in zip(context, segment)]
    ids = torch.zeros(2, max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    start, end = torch.tensor([len(c) for c in context]), torch.tensor([len(r) for r in rows])
    mask = torch.arange(ids.shape[1])[None] < end[:, None]
    got = segment_logprobs(model(ids, attention_mask=mask), ids, start, end)
    want = token_logprobs(model, context, segment)[0].sum(-1)
    assert torch.allclose(got, want, atol=1e-5)
    empty = segment_logprobs(model(ids, attention_mask=mask), ids, end, end)  # an empty segment: log-prob 0
    assert empty.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------- length penalty

def test_length_penalty_hand_computed():
    lengths, correct = T(10, 20, 30), torch.tensor([True, False, True])
    # λ = .5 − (len − 10)/20 = (.5, 0, −.5); correct keep λ, wrong get min(0, λ)
    assert length_penalty(lengths, correct, 1.0).tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert length_penalty(lengths, ~correct, 2.0).tolist() == pytest.approx([0.0, 0.0, -1.0])  # wrong: min(0, λ)
    assert length_penalty(T(10, 30, 20), torch.tensor([False, False, False]), 1.0).tolist() == pytest.approx([0, -.5, 0])
    groups = torch.tensor([[7.0, 7.0, 7.0], [4.0, 8.0, 5.0]])  # all lengths equal → 0 for the whole group
    out = length_penalty(groups, torch.tensor([[True, False, True], [True, True, False]]), 0.5)
    # second group: λ = .5 − (len − 4)/4 = (.5, −.5, .25); the third is wrong → min(0, .25) = 0; × weight .5
    want = torch.tensor([[0.0, 0.0, 0.0], [0.5 * 0.5, 0.5 * -0.5, 0.5 * min(0.0, 0.5 - 1 / 4)]])
    torch.testing.assert_close(out, want)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------- DPO and long2short

def test_dpo_loss_hand_computed():
    pc = T(-1.0).requires_grad_()
    # β[(−1 − −2) − (−3 − −2)] = .1 · 2 = .2 → −log σ(.2) = log(1 + e^−.2)
    loss, m = dpo_loss(pc, T(-3.0), T(-2.0), T(-2.0), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert m["reward_margin"].item() == pytest.approx(0.2) and m["reward_accuracy"].item() == 1.0
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)))  # −β σ(−margin)
    batch, _ = dpo_loss(T(-1.0, 0.0), T(-3.0, 0.0), T(-2.0, 0.0), T(-2.0, 0.0), beta=0.1)
    assert batch.item() == pytest.approx((math.log1p(math.exp(-0.2)) + math.log(2)) / 2)


def test_merge_weights():
    a = {"w": T(1.0, 2.0), "n": torch.tensor([3])}
    b = {"w": T(5.0, 6.0), "n": torch.tensor([3])}
    out = merge_weights(a, b, 0.25)
    assert out["w"].tolist() == [4.0, 5.0] and out["n"].tolist() == [3]
    assert merge_weights(a, b, 1.0)["w"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="keys"):
        merge_weights(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="non-floating"):
        merge_weights(a, {**b, "n": torch.tensor([4])}, 0.5)
    torch.manual_seed(0)  # two models' state dicts average into a loadable one
    m1, m2 = (TinyLM(TinyLMConfig(TOK.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=16)) for _ in range(2))
    merged = TinyLM(m1.config)
    merged.load_state_dict(merge_weights(m1.state_dict(), m2.state_dict(), 0.5))
    assert torch.allclose(merged.tok.weight, (m1.tok.weight + m2.tok.weight) / 2)


PROBLEMS = [Problem("1+1=", "2", 1, 0), Problem("2+2=", "4", 1, 1), Problem("3+3=", "6", 1, 2)]
SAMPLES = {"1+1=": ["=2", "1+1+0=02;=2", "=3"], "2+2=": ["=5", "=6", "2+2+0=04;=4"], "3+3=": ["=7", "=8", "=9"]}


def fake_sample(problems, n):
    return [SAMPLES[p.prompt][:n] for p in problems]


def check(problem, response):
    return float(response.rsplit("=", 1)[-1] == problem.answer)


def test_shortest_rejection_sampling_keeps_the_shortest_correct():
    rows = shortest_rejection_sampling(fake_sample, check, PROBLEMS, n=3)
    assert rows == [{"prompt": "1+1=", "response": "=2"}, {"prompt": "2+2=", "response": "2+2+0=04;=4"}]


def test_dpo_pairs_export(tmp_path):
    rows = dpo_pairs(fake_sample, check, PROBLEMS, n=3, path=tmp_path / "pairs" / "dpo.jsonl", length_ratio=1.5)
    assert rows == [{"prompt": "1+1=", "chosen": "=2", "rejected": "1+1+0=02;=2"},  # correct but much longer
                    {"prompt": "1+1=", "chosen": "=2", "rejected": "=3"},  # wrong
                    {"prompt": "2+2=", "chosen": "2+2+0=04;=4", "rejected": "=5"},
                    {"prompt": "2+2=", "chosen": "2+2+0=04;=4", "rejected": "=6"}]  # 3+3: nothing correct, no pair
    lines = (tmp_path / "pairs" / "dpo.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rows


# ------------------------------------------------------------------------------------------- repetition

def test_first_repetition():
    assert first_repetition([5] * 10, max_ngram=8, min_repeats=6) == 6  # "555555" after its sixth token
    assert first_repetition([1, 2] * 8, max_ngram=8, min_repeats=4) == 8  # "12121212"
    assert first_repetition([9, 1, 2, 3] * 3 + [7], max_ngram=4, min_repeats=3) == 12  # a 4-gram × 3
    assert first_repetition([1, 2, 3] * 3, max_ngram=2, min_repeats=3) is None  # 3-gram beyond max_ngram
    assert first_repetition([5] * 10, 8, 6, start=7) == 8  # only an end beyond the earlier segment counts
    assert first_repetition([5] * 10, 8, 0) is None  # off
    task = ArithmeticTask(num_train=300, num_test=0, max_digits=4, seed=3)  # worked solutions are never flagged
    for p in task.train:
        assert first_repetition(TOK.encode(task.solution(p) + "", add_eos=True), 8, 6) is None, p


# ------------------------------------------------------------------------------------------- sampler

def test_sampler_probabilities_follow_one_minus_success_rate():
    s = ProblemSampler([1, 1, 2, 2])
    assert s.probabilities().tolist() == pytest.approx([0.25] * 4)  # nothing seen: s_i = 0 everywhere
    s.update(0, 1.0)  # first visit, step 1/1 → s_0 = 1
    s.update(1, 0.5)
    s.update(1, 0.0)  # 1/n steps: the running mean (0.5 + 0)/2
    assert s.success.tolist() == pytest.approx([1.0, 0.25, 0.0, 0.0])
    assert s.success[1].item() == pytest.approx(incremental_mean(torch.tensor(0.5), torch.tensor(0.0), 0.5).item())
    w = torch.tensor([0.0, 0.75, 1.0, 1.0])
    assert s.probabilities().tolist() == pytest.approx((w / w.sum()).tolist())
    counts = torch.bincount(torch.tensor(sum((s.sample(2, torch.Generator().manual_seed(i)) for i in range(2000)), [])),
                            minlength=4)
    assert counts[0] == 0 and all(len(set(s.sample(3, torch.Generator().manual_seed(i)))) == 3 for i in range(20))
    c = ProblemSampler([1, 2], step_size=0.5)  # a constant step tracks: s ← s − .5 (s − x)
    c.update(0, 1.0)
    c.update(0, 1.0)
    assert c.success[0].item() == pytest.approx(0.75)
    flat = ProblemSampler([1, 2], prioritized=False)
    flat.update(0, 1.0)
    assert flat.probabilities().tolist() == [0.5, 0.5]
    for i in range(2):
        s.update(i, 1.0)
    s.success[:] = 1.0  # everything solved: uniform over the open problems rather than nothing
    assert s.probabilities().tolist() == pytest.approx([0.25] * 4)


def test_sampler_curriculum_and_state():
    s = ProblemSampler([1, 1, 2, 3], curriculum=True, unlock_pass_rate=0.6)
    assert s.probabilities().tolist() == pytest.approx([0.5, 0.5, 0, 0])
    s.update(0, 0.5)
    s.end_iteration()
    assert s.unlocked == 1  # level 1's pass rate .5 < .6
    s.update(1, 1.0)
    s.end_iteration()  # mean over visited level-1 problems (.5 + 1)/2 = .75 ≥ .6 → level 2 opens
    assert s.unlocked == 2 and s.probabilities()[3] == 0 and s.probabilities()[2] > 0
    t = ProblemSampler([1, 2, 3], curriculum=True, unlock_every=2)
    for _ in range(4):
        t.end_iteration()
    assert t.unlocked == 3
    u = ProblemSampler([1, 1, 2, 3], curriculum=True)
    u.load_state_dict(s.state_dict())
    assert u.unlocked == 2 and torch.equal(u.success, s.success) and torch.equal(u.visits, s.visits)


# ------------------------------------------------------------------------------------------- partial rollouts

class ScriptedPolicy:
    """Row r of a new group answers SCRIPT[r % k]; a continued row goes on with the script it started."""

    eos_id, pad_id, context = TOK.eos_id, TOK.pad_id, 32

    def __init__(self, scripts, prompt_len):
        self.scripts, self.prompt_len = scripts, prompt_len

    def encode(self, text):
        return TOK.encode(text, add_bos=True)

    def decode(self, ids):
        return TOK.decode(ids)

    def generate(self, prompts, max_new_tokens, temperature, top_p, generator=None):
        out = []
        for i, p in enumerate(prompts):
            so_far = list(p[self.prompt_len:])
            script = next(s for j, s in enumerate(self.scripts) if s[:len(so_far)] == so_far and (so_far or j == i % 2))
            out.append(script[len(so_far):len(so_far) + max_new_tokens])
        width = max(map(len, out))
        return SimpleNamespace(sequences=lambda: out, tokens=torch.tensor([o + [0] * (width - len(o)) for o in out]),
                               lengths=torch.tensor(list(map(len, out))))


def test_partial_rollouts_wait_in_the_replay_buffer_and_continue():
    task = CustomTask.from_lists(["1+1="], ["2"], lambda response, answer: response.endswith("=" + answer), test_fraction=0)
    prompt = TOK.encode("1+1=", add_bos=True)
    short, long_ = TOK.encode("=2", add_eos=True), TOK.encode("1;2;=5", add_eos=True)  # 3 and 7 tokens
    cfg = KimiConfig(k=2, prompts_per_iteration=1, max_response_tokens=10, rollout_budget=4, repetition_repeats=0)
    agent = SimpleNamespace(cfg=cfg, policy=ScriptedPolicy([short, long_], len(prompt)), device=torch.device("cpu"),
                            llm_stats=MetricAccumulator(), ensure_warm=lambda task: None)
    collector, storage = LLMCollector(agent, task, seed=0), IterationBatch()
    # iteration 1: "=2<eos>" finishes; "1;2;" hits the 4-token budget, so the whole group waits in the buffer
    assert collector.collect(agent, storage, False) == (0, [])
    assert list(storage.batches()) == [] and len(collector.pending) == 2
    d = collector.pending.data
    assert d["length"][:2].tolist() == [len(prompt) + 3, len(prompt) + 4] and d["done"][:2].tolist() == [True, False]
    assert d["ids"][1, :len(prompt) + 4].tolist() == prompt + long_[:4]
    # iteration 2: the waiting group is continued first (no new prompt: prompts_per_iteration = 1)
    assert collector.collect(agent, storage, False) == (2, [])
    assert len(collector.pending) == 0
    (batch,) = list(storage.batches())
    ids, start, end = batch["ids"], batch["start"].tolist(), batch["end"].tolist()
    assert ids[1, :end[1]].tolist() == prompt + long_  # the final response = both segments
    assert ids[0, :end[0]].tolist() == prompt + short
    assert start == [len(prompt) + 3, len(prompt) + 4]  # trained on: only this iteration's segment ...
    assert end == [len(prompt) + 3, len(prompt) + 7]  # ... (empty for the rollout that finished in iteration 1)
    assert batch["reward"].tolist() == [1.0, 0.0]  # rewards from the whole responses
    assert collector.sampler.visits[0] == 1 and collector.sampler.success[0] == 0.5
    logs, texts = collector.pop_logs()
    assert logs["llm/accuracy"] == 0.5 and logs["llm/response_length_mean"] == 5.0 and "1+1=" in texts["llm/samples"]
    assert logs["charts/episodic_return"] == logs["llm/reward_mean"] == 0.5


def tiny_agent(**kw):
    return Kimi.from_task("arithmetic", device="cpu", task_kwargs=SMALL_TASK, **{**TINY, **kw})


def test_partial_rollout_with_the_tinylm_continues_and_trains_on_the_last_segment():
    agent = tiny_agent(rollout_budget=5, max_response_tokens=12, repetition_repeats=0)
    agent.warm, agent.start_eval = True, {"accuracy": 0.0}  # a random policy is enough here
    agent.policy.eos_id = -1  # never stops: every rollout takes 12 tokens over 3 iterations
    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    assert collector.collect(agent, storage, False) == (0, [])
    first = collector.pending.data["ids"][:8].clone()
    lengths = collector.pending.data["length"][:8].clone()
    prompt_len = collector.pending.data["prompt_len"][:8]
    assert (lengths - prompt_len).tolist() == [5] * 8
    assert collector.collect(agent, storage, False) == (0, [])
    second = collector.pending.data["ids"][:8]
    for i in range(8):  # continued: the earlier segment is a prefix of the longer rollout
        assert torch.equal(second[i, :lengths[i]], first[i, :lengths[i]])
    assert collector.collect(agent, storage, False) == (8, [])
    (batch,) = list(storage.batches())
    assert (batch["end"] - batch["start"]).tolist() == [2] * 8  # 12 = 5 + 5 + 2
    rows = [batch["ids"][i, :batch["end"][i]].tolist() for i in range(8)]
    context = [r[:int(s)] for r, s in zip(rows, batch["start"])]
    segment = [r[int(s):] for r, s in zip(rows, batch["start"])]
    with torch.no_grad():  # log π(current segment | prompt + earlier segments)
        want = token_logprobs(agent.model, context, segment)[0].sum(-1)
        assert torch.allclose(agent.sequence_logprobs(batch), want, atol=1e-5)
    metrics = agent.update(batch)
    assert set(metrics) == {"policy", "log_ratio_sq"} and all(torch.isfinite(v) for v in metrics.values())


def test_update_takes_several_steps_against_the_policy_at_the_start_of_the_iteration():
    """grad_steps Adam steps on the same samples, each against π_θi (the policy before the first step): replayed by
    hand on a copy, the metrics and the final weights agree."""
    agent = tiny_agent(grad_steps=3, max_grad_norm=0.5, repetition_repeats=0)
    agent.warm, agent.start_eval = True, {"accuracy": 0.0}
    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    collector.collect(agent, storage, False)
    (batch,) = list(storage.batches())
    batch["reward"] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    replay = copy.deepcopy(agent)
    with torch.no_grad():
        ref = replay.sequence_logprobs(batch)  # π_θi, fixed for the whole iteration
    seen = []
    for _ in range(3):
        loss, m = kimi_loss(replay.sequence_logprobs(batch), ref, batch["reward"], 0.1, 2)
        replay.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(replay.model.parameters(), 0.5)
        replay.opt.step()
        seen.append(m)
    metrics = agent.update(batch)
    assert seen[0]["log_ratio_sq"] == 0 and seen[2]["log_ratio_sq"] > 0  # θ moves away from θ_i within the iteration
    for key in ("policy", "log_ratio_sq"):
        assert metrics[key].item() == pytest.approx(sum(m[key].item() for m in seen) / 3, rel=1e-5)
    for a, b in zip(agent.model.parameters(), replay.model.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert agent.iteration == 1 and collector.pop_logs()[0]["llm/log_ratio_sq"] == pytest.approx(metrics["log_ratio_sq"].item())


# ------------------------------------------------------------------------------------------- bad input

def test_bad_config_values():
    with pytest.raises(ConfigError, match="no baseline"):
        KimiConfig(k=1)
    with pytest.raises(ConfigError, match="model_path"):
        KimiConfig(policy="hf")
    with pytest.raises(ConfigError, match="agent.tau"):
        KimiConfig(tau=0)
    with pytest.raises(ConfigError, match="top_p"):
        KimiConfig(top_p=1.5)


def test_missing_model_path():
    with pytest.raises(ConfigError, match="no such directory"):
        tiny_agent(model_path="/nonexistent/sft")
    with pytest.raises(ConfigError, match="no such directory|transformers"):
        tiny_agent(policy="hf", model_path="/nonexistent/hf-model")


def test_tiny_checkpoint_with_a_mismatched_tokenizer(tmp_path):
    TinyLM(TinyLMConfig(TOK.vocab_size + 3, d_model=16, n_layers=1, n_heads=2, max_len=32)).save_pretrained(tmp_path)
    TOK.save(tmp_path)
    with pytest.raises(ConfigError, match="vocabulary"):
        tiny_agent(model_path=str(tmp_path))
    with pytest.raises(ConfigError, match="tokenizer.json"):
        TinyLM(TinyLMConfig(TOK.vocab_size, d_model=16, n_layers=1, n_heads=2)).save_pretrained(tmp_path / "b")
        tiny_agent(model_path=str(tmp_path / "b"))


def test_empty_task_and_budgets():
    agent = tiny_agent()
    empty = Config(agent=agent.cfg, env=EnvConfig(name="a", id="arithmetic", kwargs={"num_train": 0, "num_test": 0}),
                   buffer=BufferConfig(), trainer=TrainerConfig(), logger=LoggerConfig(), device="cpu")
    with pytest.raises(ConfigError, match="no problems"):
        Kimi(None, None, agent.cfg, "cpu").make_collector(empty)
    no_train = Config(**{**empty.__dict__, "env": EnvConfig(id="arithmetic", kwargs={"num_train": 0, "num_test": 5})})
    with pytest.raises(ConfigError, match="no training problems"):
        Kimi(None, None, agent.cfg, "cpu").make_collector(no_train)
    with pytest.raises(ConfigError, match="unknown task"):
        Kimi(None, None, agent.cfg, "cpu").make_collector(Config(**{**empty.__dict__, "env": EnvConfig(id="chess")}))
    # prompts of up to 7 tokens ("[bos]99+99="): 7 + 30 > a 32-token context
    with pytest.raises(ConfigError, match=r"max_response_tokens=30 does not fit.*<= 25"):
        tiny_agent(max_response_tokens=30).make_collector(agent.run_config)
    with pytest.raises(ConfigError, match="leaving 0 for a response"):
        tiny_agent(context=6, max_response_tokens=4).make_collector(agent.run_config)


def mismatched_tiny_checkpoint(path):
    """A TinyLM checkpoint whose model has 3 more tokens than the tokenizer saved beside it."""
    TinyLM(TinyLMConfig(TOK.vocab_size + 3, d_model=16, n_layers=1, n_heads=2, max_len=32)).save_pretrained(path)
    TOK.save(path)
    return path


@pytest.mark.parametrize("case", ["k", "empty", "model_path", "vocab", "budget", "task_file"])
def test_cli_reports_bad_input_in_one_line(tmp_path, case):
    """Each bad input of issue 4 item 7 through `python -m rl.train`: exit code 2, one line on stderr, no traceback,
    nothing trained (no checkpoint, and the run directory Hydra made is removed)."""
    from tests.conftest import ROOT, run_cli

    args, message = {
        "k": (["agent.k=1"], "no baseline"),
        "empty": (["env.kwargs.num_train=0", "env.kwargs.num_test=0"], "no problems"),
        "model_path": ([f"agent.model_path={tmp_path}/missing"], "no such directory"),
        "vocab": ([f"agent.model_path={mismatched_tiny_checkpoint(tmp_path / 'sft')}"], "not saved together"),
        "budget": (["agent.max_response_tokens=60"], "max_response_tokens=60 does not fit"),  # 64-token context
        "task_file": (["env=jsonl"], "needs env.kwargs.path"),
    }[case]
    run_dir = tmp_path / "run"
    out = run_cli("agent=kimi", "env=arithmetic", *args, f"hydra.run.dir={run_dir}", cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout and not run_dir.exists()


# ------------------------------------------------------------------------------------------- Hugging Face path

def save_tiny_hf(path, arch="gpt2", model_vocab=None):
    """A randomly initialized 2-layer model and a character-level fast tokenizer (rl.lm.hf), saved to ``path``."""
    pytest.importorskip("transformers")
    from rl.lm.hf import save_tiny_model

    return save_tiny_model(path, arch=arch, layers=2, hidden=32, heads=2, context=48, model_vocab=model_vocab)


def test_hf_vocab_mismatch(tmp_path):
    save_tiny_hf(tmp_path, model_vocab=10)  # the tokenizer has 26 tokens
    with pytest.raises(ConfigError, match="do not match"):
        tiny_agent(policy="hf", model_path=str(tmp_path))


def test_hf_model_path_that_is_not_a_model(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="cannot load a causal LM"):
        tiny_agent(policy="hf", model_path=str(tmp_path))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hf_sampling_matches_full_forward(tmp_path, arch):
    """Left-padded batched sampling with the model's KV cache gives, token by token, what one full forward pass of
    each unpadded row gives; and the learner's log π(y|x) (right-padded rows) equals the sum of those log-probs."""
    from agents.kimi import HFPolicy

    policy = HFPolicy(str(save_tiny_hf(tmp_path, arch)), "float32", torch.device("cpu"))
    prompts = [policy.encode(p) for p in ["12+3=", "9+9=", "1234+5678="]]
    assert prompts[0] == [1] + TOK.encode("12+3=") and policy.decode(prompts[0] + [TOK.eos_id, 5]) == "12+3="
    out = policy.generate(prompts, 10, 1.0, 1.0, torch.Generator().manual_seed(0))
    greedy = policy.generate(prompts, 10, 0.0, 1.0)
    rows, want = [], []
    for p, sampled, best in zip(prompts, out.sequences(), greedy.sequences()):
        with torch.no_grad():
            logp = torch.log_softmax(policy.module(input_ids=torch.tensor([p + sampled])).logits[0], -1)
            logits = policy.module(input_ids=torch.tensor([p + best])).logits[0]
        assert logits[len(p) - 1:-1].argmax(-1).tolist() == best  # greedy: each token is the full pass's argmax
        rows.append(p + sampled)
        want.append(sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(sampled)))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [policy.pad_id] * (width - len(r)) for r in rows])
    start, end = torch.tensor([len(p) for p in prompts]), torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        got = segment_logprobs(policy.logits(ids, torch.arange(width)[None] < end[:, None]), ids, start, end)
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def decode_logits(step, prompts, tokens, pad_id):
    """Feed ``tokens`` [B, n] after the left-padded ``prompts`` through ``step``; the logits of every step, [n, B, V]."""
    from rl.lm.sampling import pad_left

    ids, mask = pad_left(prompts, pad_id, "cpu")
    logits, cache = step(ids, mask, None)
    out = [logits[:, -1]]
    for t in range(tokens.shape[1] - 1):
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.bool)], 1)
        logits, cache = step(tokens[:, t:t + 1], mask, cache)
        out.append(logits[:, -1])
    return torch.stack(out)


@pytest.mark.parametrize("arch,attention", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"), ("gpt2", "eager")])
def test_static_decoder_gives_the_dynamic_cache_logits(tmp_path, arch, attention):
    """rl.lm.hf.StaticDecoder (preallocated cache, masks built by us, rows padded to 8, cache length to 32 — what
    CUDA graphs replay) gives the logits of the model's own dynamic-cache path at every step, for left-padded rows."""
    import functools

    from agents.kimi import HFPolicy
    from rl.lm.hf import StaticDecoder

    policy = HFPolicy(str(save_tiny_hf(tmp_path, arch)), "float32", torch.device("cpu"))
    policy.module.config._attn_implementation = attention
    prompts = [policy.encode(p) for p in ["12+3=", "9+9=", "1234+5678="]]
    tokens = torch.randint(3, 15, (3, 12), generator=torch.Generator().manual_seed(0))
    decoder = StaticDecoder(policy.module)
    with torch.no_grad():
        want = decode_logits(policy.step, prompts, tokens, policy.pad_id)
        got = decode_logits(functools.partial(decoder, new_tokens=12), prompts, tokens, policy.pad_id)
        again = decode_logits(functools.partial(decoder, new_tokens=12), prompts[:2], tokens[:2], policy.pad_id)
    assert list(decoder.slots) == [(8, 32)]  # 3 and 2 rows share one padded slot (and one graph, on a GPU)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want[:, :2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceed the model's context"):
        decoder(torch.ones(1, 40, dtype=torch.long), torch.ones(1, 40, dtype=torch.bool), None, new_tokens=9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decoding_equals_eager(tmp_path):
    """On a GPU, policy.use_cuda_graphs() replays each decoding step from a graph: the same greedy and seeded sampled
    responses as eager decoding, over calls with different batch sizes (partial rollouts), and graphs really replay."""
    from agents.kimi import HFPolicy

    path = str(save_tiny_hf(tmp_path, "llama"))
    eager, graphed = (HFPolicy(path, "float32", torch.device("cuda")) for _ in range(2))
    assert graphed.use_cuda_graphs()
    prompts = [eager.encode(f"{a}+{b}=") for a, b in [(12, 3), (9, 9), (1234, 5678), (7, 70), (55, 5)]]
    for n in (5, 3, 5, 5, 2):
        for temperature in (0.0, 1.0):
            a = eager.generate(prompts[:n], 24, temperature, 1.0, torch.Generator("cuda").manual_seed(n))
            b = graphed.generate(prompts[:n], 24, temperature, 1.0, torch.Generator("cuda").manual_seed(n))
            assert a.sequences() == b.sequences(), (n, temperature)
    assert graphed.static.graphed.graphs


def test_hf_policy_generates_and_learns(tmp_path):
    save_tiny_hf(tmp_path)
    agent = tiny_agent(policy="hf", model_path=str(tmp_path), max_response_tokens=12, repetition_repeats=0)
    assert agent.warm and agent.policy.encode("12+3=")[0] == 1 and agent.policy.decode(agent.policy.encode("12+3=")) == "12+3="
    collector, storage = agent.make_collector(agent.run_config), agent.make_storage(agent.run_config)
    n, _ = collector.collect(agent, storage, False)
    assert n == 8
    (batch,) = list(storage.batches())
    assert ((batch["end"] - batch["start"]) >= 1).all() and (batch["end"] - batch["start"] <= 12).all()
    # a random model solves nothing, and with equal rewards (and θ = θ_i) the loss has zero gradient: give the group
    # members different rewards so that the update must move the weights
    batch["reward"] = torch.tensor([1.0, 0.0] * 4)
    before = [p.detach().clone() for p in agent.model.parameters()]
    metrics = agent.update(batch)
    assert torch.isfinite(metrics["policy"])
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))
    result = agent.evaluate()
    assert 0 <= result["accuracy"] <= 1 and result["response_length_mean"] >= 1


# ------------------------------------------------------------------------------------------- end to end

def test_train_run_logs_llm_tags_and_checkpoints(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rl.train import run

    cfg = Config(agent=KimiConfig(**TINY), env=EnvConfig(name="arithmetic", id="arithmetic", kwargs=SMALL_TASK),
                 buffer=BufferConfig(), trainer=TrainerConfig(total_steps=24, eval_every=16, log_every=8,
                                                              checkpoint_every=0, progress=False),
                 logger=LoggerConfig(), seed=0, device="cpu")
    result = run(cfg, run_dir=tmp_path)
    assert result["step"] == 24 and 0 <= result["accuracy"] <= 1 and "start_accuracy" in result
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"llm/accuracy", "llm/reward_mean", "llm/response_length_mean", "llm/tokens_per_s", "llm/log_ratio_sq",
            "losses/policy", "losses/log_ratio_sq", "eval/accuracy", "eval/response_length_mean"} <= tags
    assert [e.step for e in ea.Scalars("eval/accuracy")] == [16, 24]
    assert [e.step for e in ea.Scalars("llm/accuracy")] == [8, 16, 24]  # logged by the trainer at each log step
    assert all(0 <= e.value <= 1 for e in ea.Scalars("llm/accuracy"))
    assert all(e.value > 0 for e in ea.Scalars("llm/tokens_per_s") + ea.Scalars("llm/response_length_mean"))
    samples = ea.Tensors("llm/samples/text_summary")  # sample completions, as text
    assert len(samples) == 3
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert "→" in text and "reward" in text and any(p.prompt in text for p in ArithmeticTask(**SMALL_TASK).train)
    agent = Kimi.load(tmp_path, device="cpu")  # the trainer's checkpoint loads back into a policy object
    assert agent.warm and agent.iteration == 3 and isinstance(agent.predict("12+34="), str)


def test_notebook_api(tmp_path):
    from agents import Kimi as K

    agent = K.from_task("arithmetic", device="cpu", task_kwargs=SMALL_TASK, **TINY)
    before = agent.evaluate()  # runs the quick SFT warm start first
    result = agent.learn(16, progress=False, eval_every=0)
    assert result["step"] == 16 and agent.iteration == 2
    after = agent.evaluate(episodes=8)
    assert set(after) == {"accuracy", "response_length_mean", "correct_length_mean", "sampled_accuracy"}
    assert 0 <= before["accuracy"] <= 1 and 0 <= before["sampled_accuracy"] <= 1
    texts = agent.predict(["12+34=", "5+6="])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    agent.save(tmp_path / "kimi.pt")
    again = K.load(tmp_path / "kimi.pt", device="cpu")
    assert again.predict("12+34=") == texts[0]
    custom = CustomTask.from_lists([f"{a}+{b}=" for a in range(5) for b in range(5)], [str(a + b) for a in range(5)
                                   for b in range(5)], lambda response, answer: response.endswith("=" + answer))
    mine = K.from_task(custom, device="cpu", **{**TINY, "sft_steps": 5})  # bring your own task
    assert mine.learn(8, progress=False, eval_every=0)["step"] == 8


CLI_TINY = ["agent.d_model=32", "agent.n_layers=1", "agent.n_heads=2", "agent.context=32", "agent.sft_steps=20",
            "agent.sft_batch_size=16", "agent.k=2", "agent.prompts_per_iteration=4", "agent.max_response_tokens=12",
            "trainer.total_steps=16", "trainer.eval_every=0", "trainer.log_every=8", "trainer.progress=false",
            "device=cpu"]


def test_cli_brings_your_own_task_from_a_jsonl_file(tmp_path):
    from tests.conftest import ROOT, run_cli

    path = tmp_path / "products.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}*{b}=", "answer": str(a * b)}) + "\n"
                            for a in range(10) for b in range(10)))
    out = run_cli("agent=kimi", "env=jsonl", f"env.kwargs.path={path}", "env.kwargs.checker=envs.text_tasks:exact_match",
                  *CLI_TINY, f"hydra.run.dir={tmp_path}/run", cwd=ROOT, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "done: step=16" in out.stdout and "start_accuracy=" in out.stdout and (tmp_path / "run/checkpoint.pt").exists()


def test_custom_task_with_its_own_alphabet():
    """A CustomTask whose text uses characters the shipped tasks do not: from_task gives the fresh TinyLM an
    alphabet that covers them; the CLI-style agent without it says which key to set."""
    words = ["cat", "dog", "emu", "fox", "gnu", "hen", "owl", "yak"]
    task = CustomTask.from_lists([f"{w}>" for w in words], [w[::-1] for w in words], exact_match, test_fraction=0.25)
    agent = Kimi.from_task(task, device="cpu", **{**TINY, "sft_steps": 5, "max_response_tokens": 6})
    assert set("catdogemu") <= set(agent.policy.tokenizer.chars)
    assert agent.learn(8, progress=False, eval_every=0)["step"] == 8
    plain = Kimi(None, None, KimiConfig(**{**TINY, "max_response_tokens": 6}), "cpu")
    with pytest.raises(ConfigError, match="agent.chars"):
        plain.check_fits(task)


def test_gpu_run_script_smoke(tmp_path):
    """scripts/kimi_gpu_run.py end to end with tiny settings on the CPU (the H100 run uses its defaults)."""
    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "scripts/kimi_gpu_run.py", "--device", "cpu", "--minutes", "0.3",
                           "--sft-steps", "20", "--prompts", "4", "--k", "2", "--chunk-seconds", "5",
                           "--eval-problems", "16", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "kimi_gpu_run.json").read_text())
    assert result["rl_samples"] > 0 and len(result["curve"]) >= 2 and result["total_seconds"] < 40
    assert "held-out accuracy" in proc.stdout and result["generation_tokens_per_s"] > 0
    assert (tmp_path / "tb").is_dir()


BENCH_TINY = ["--device", "cpu", "--layers", "1", "--hidden", "32", "--heads", "2", "--prompts", "4", "--k", "2",
              "--max-new-tokens", "8", "--iterations", "2", "--warmup", "1"]


@pytest.mark.parametrize("trl", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bench_llm_smoke(tmp_path, trl):
    """scripts/bench_llm.py end to end with tiny settings on the CPU; with TRL installed (slow), both halves."""
    from tests.conftest import ROOT

    pytest.importorskip("transformers")
    if trl:
        pytest.importorskip("trl")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "scripts/bench_llm.py", *BENCH_TINY, "--json", str(out),
                           *([] if trl else ["--no-trl"])], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["ours"]["samples"] == 2 * 4 * 2 and result["ours"]["samples_per_s"] > 0
    assert result["ours"]["gen_tokens_per_s"] > 0
    if trl:
        assert result["trl"]["samples_per_s"] > 0 and result["ratio_ours"]["samples_per_s"] > 0
        assert "ours / TRL" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("env, gains", [("arithmetic", {"sampled_accuracy": 0.05, "accuracy": 0.03}),
                                        ("countdown", {"sampled_accuracy": 0.03})])
def test_default_cli_run_learns(tmp_path, env, gains):
    """`python -m rl.train agent=kimi env=<task>` with no other argument gains held-out accuracy in < 10 minutes.
    Sampled accuracy (one response per problem at the run's temperature: the expected reward RL maximizes) is the
    main check; arithmetic's greedy accuracy must rise too. On 2 CPU cores: arithmetic sampled 13.5 % → 22.5 % and
    greedy 42.2 % → 48.3 % (another run: 14.5 % → 26.8 %, 41 % → 57 %); countdown sampled 20.5 % → 26.2 %, its
    greedy accuracy flat (docs/benchmarks.md)."""
    from tests.conftest import ROOT, run_cli

    out = run_cli("agent=kimi", f"env={env}", f"hydra.run.dir={tmp_path}", cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = dict(kv.split("=") for kv in out.stdout.split("done: ")[1].split(" (")[0].split(", "))
    for key, min_gain in gains.items():
        assert float(summary[key]) >= float(summary[f"start_{key}"]) + min_gain, (key, out.stdout)
