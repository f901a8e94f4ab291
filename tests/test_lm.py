"""The offline policy: tokenizer, TinyLM with its KV cache, batched sampling, log-probs, SFT, save/load."""

import pytest
import torch
import torch.nn.functional as F

from envs.text_tasks import ArithmeticTask, CountdownTask
from rl.lm import (BOS_ID, EOS_ID, PAD_ID, CharTokenizer, TinyLM, TinyLMConfig, evaluate, generate,
                   sequence_logprobs, sft, token_logprobs)
from rl.lm.sampling import pad_left, sample_next, stream_uniforms

TOK = CharTokenizer()


def random_model(seed: int = 0, **kw) -> TinyLM:
    """A float64 TinyLM with large random weights, so that its greedy outputs vary from token to token."""
    torch.manual_seed(seed)
    model = TinyLM(TinyLMConfig(TOK.vocab_size, **{"d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 48, **kw}))
    for name, p in model.named_parameters():
        if ".ln" not in name and not name.startswith("ln"):
            p.data.normal_(0, 0.5)
    return model.double().eval()


PROMPTS = [TOK.encode("37+85=", add_bos=True), TOK.encode("1+2=", add_bos=True), TOK.encode("1234+5678=", add_bos=True)]


# ------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_and_errors(tmp_path):
    task = ArithmeticTask(num_train=50, num_test=0, max_digits=3)
    for p in task.train + CountdownTask(num_train=50, num_test=0).train:
        text = p.prompt + (task.solution(p) if "+" in p.prompt else "")
        assert TOK.decode(TOK.encode(text)) == text
    ids = TOK.encode("12=3", add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID == TOK.bos_id and ids[-1] == EOS_ID == TOK.eos_id and TOK.pad_id == PAD_ID == 0
    assert TOK.decode(ids + TOK.encode("99")) == "12=3"
    assert TOK.decode(ids + TOK.encode("99"), stop_at_eos=False) == "12=399"
    with pytest.raises(ValueError, match=r"\['x'\]"):
        TOK.encode("1x2")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([TOK.vocab_size])
    TOK.save(tmp_path)
    assert CharTokenizer.load(tmp_path) == TOK and CharTokenizer.load(tmp_path).encode("3*7+5") == TOK.encode("3*7+5")


# ------------------------------------------------------------------------------------------- model

def test_padded_and_cached_forward_match_unpadded():
    model = random_model()
    ids, mask = pad_left(PROMPTS, PAD_ID, "cpu")
    full = model(ids, attention_mask=mask)
    cache = model.new_cache(len(PROMPTS))
    split = ids.shape[1] - 3
    first, _ = model(ids[:, :split], attention_mask=mask[:, :split], kv_cache=cache)
    rest = [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=cache)[0] for t in range(split, ids.shape[1])]
    cached = torch.cat([first, *rest], dim=1)
    for i, p in enumerate(PROMPTS):
        alone = model(torch.tensor([p]))[0]
        assert torch.allclose(full[i, -len(p):], alone, atol=1e-10)
        assert torch.allclose(cached[i, -len(p):], alone, atol=1e-10)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 49, dtype=torch.long))


def naive_greedy(model: TinyLM, prompt: list[int], max_new: int) -> list[int]:
    """Greedy decoding of one unpadded prompt, recomputing the whole sequence at every step."""
    ids = list(prompt)
    for _ in range(max_new):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        if ids[-1] == EOS_ID:
            break
    return ids[len(prompt):]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kv_cache_greedy_equals_full_recompute(seed):
    model = random_model(seed)
    out = generate(model, PROMPTS, max_new_tokens=20, temperature=0.0)
    assert out.sequences() == [naive_greedy(model, p, 20) for p in PROMPTS]
    assert len(set(map(tuple, out.sequences()))) == len(PROMPTS)


def test_inverse_cdf_draws_follow_softmax_over_temperature():
    # 40,000 draws from one row of logits at T = 0.7: each token's frequency is within 4 standard errors of
    # softmax(logits / T), and the returned log-prob of every draw is log softmax(logits / T) of that token.
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0]]).repeat(40_000, 1)
    u = stream_uniforms(7, list(range(40_000)), [0] * 40_000, 1)[:, 0]
    tok, logp = sample_next(logits, 0.7, u)
    p = F.softmax(logits[0] / 0.7, -1)
    freq = torch.bincount(tok, minlength=5).float() / len(tok)
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / len(tok)).sqrt()).all(), (freq, p)
    assert torch.allclose(logp, p.log()[tok], atol=1e-6)
    greedy, greedy_logp = sample_next(logits[:2], 0.0)
    assert greedy.tolist() == [0, 0] and torch.allclose(greedy_logp, F.log_softmax(logits[0], -1)[0])


def test_stream_uniforms_are_a_function_of_seed_stream_and_position():
    both = stream_uniforms(3, [11, 42], [0, 5], 6)
    assert torch.equal(both[1], stream_uniforms(3, [42], [5], 6)[0])  # whatever else shares the batch
    assert torch.equal(both[1, :4], stream_uniforms(3, [42], [0], 10)[0, 5:9])  # a continued rollout
    assert not torch.equal(both, stream_uniforms(4, [11, 42], [0, 5], 6))
    many = stream_uniforms(0, list(range(1000)), [0] * 1000, 100)
    assert 0 < many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.005


def test_sampling_is_seeded_and_temperature_matters():
    model = random_model(4)
    a = generate(model, PROMPTS * 4, 15, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = generate(model, PROMPTS * 4, 15, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = generate(model, PROMPTS * 4, 15, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def successor_model() -> TinyLM:
    """A TinyLM whose greedy next token depends only on the current one: 3→4→5→6→7→EOS(2)→0→1→3 (a cycle)."""
    model = TinyLM(TinyLMConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, max_len=32, tie_embeddings=False))
    nxt = {3: 4, 4: 5, 5: 6, 6: 7, 7: 2, 2: 0, 0: 1, 1: 3}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.tok.weight.copy_(torch.eye(8))
        for block in model.blocks:
            block.ln1.weight.fill_(1.0), block.ln2.weight.fill_(1.0)
        model.ln_f.weight.fill_(1.0)
        for i, j in nxt.items():
            model.head.weight[j, i] = 1.0
    return model.eval()


def test_stop_tokens_end_rows_independently():
    model = successor_model()
    out = generate(model, [[1, 7], [3], [1, 1, 5], [4]], max_new_tokens=4, temperature=0.0, stop_ids=(2,), pad_id=0)
    assert out.sequences() == [[2], [4, 5, 6, 7], [6, 7, 2], [5, 6, 7, 2]]
    assert out.lengths.tolist() == [1, 4, 3, 4]
    assert out.finished.tolist() == [True, False, True, True]
    assert out.tokens.tolist() == [[2, 0, 0, 0], [4, 5, 6, 7], [6, 7, 2, 0], [5, 6, 7, 2]]  # pad after the stop
    two_stops = generate(model, [[3], [5]], 6, temperature=0.0, stop_ids=(6, 2))
    assert two_stops.sequences() == [[4, 5, 6], [6]] and two_stops.finished.all()
    with pytest.raises(ValueError, match="max_len"):
        generate(model, [[3]], 40)


# ------------------------------------------------------------------------------------------- log-probs

def test_sequence_logprobs_by_hand():
    model = random_model(5)
    prompts, responses = [[1, 3, 4], [1, 5]], [[5, 2], [6, 7, 3, 2]]
    total = sequence_logprobs(model, prompts, responses)
    per_token, mask = token_logprobs(model, prompts, responses)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        logp = F.log_softmax(model(torch.tensor([p + r]))[0], dim=-1)
        by_hand = [logp[len(p) - 1 + j, tok] for j, tok in enumerate(r)]
        assert torch.allclose(per_token[i, :len(r)], torch.stack(by_hand).float(), atol=1e-6)
        assert torch.allclose(total[i], sum(by_hand).float(), atol=1e-5)
    assert mask.tolist() == [[True, True, False, False], [True] * 4] and per_token[0, 2:].eq(0).all()
    total.sum().backward()
    assert model.tok.weight.grad is not None and model.tok.weight.grad.abs().sum() > 0


def test_logprobs_of_generated_responses_are_finite():
    model = random_model(6)
    out = generate(model, PROMPTS, 10, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sequence_logprobs(model, PROMPTS, out.sequences())).all()
    assert sequence_logprobs(model, [[1]], [[]]).item() == 0.0


# ------------------------------------------------------------------------------------------- save / load, SFT

def test_save_load_gives_identical_logits(tmp_path):
    for tie in (True, False):
        model = random_model(7, tie_embeddings=tie).float()
        model.save_pretrained(tmp_path / str(tie))
        loaded = TinyLM.from_pretrained(tmp_path / str(tie))
        ids = torch.tensor(PROMPTS[0])[None]
        assert loaded.config == model.config and torch.equal(loaded(ids), model(ids))
    with pytest.raises(FileNotFoundError):
        TinyLM.from_pretrained(tmp_path / "missing")


def test_sft_lowers_the_loss_and_evaluate_reports():
    task = ArithmeticTask(num_train=200, num_test=20, max_digits=2)
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(TOK.vocab_size, d_model=32, n_layers=1, n_heads=2, max_len=32))
    history = sft(task, model, TOK, steps=30, batch_size=16, lr=3e-3, warmup=5, log_every=1, log=None)
    assert len(history) == 30 and history[-1]["loss"] < 0.7 * history[0]["loss"]
    result = evaluate(model, TOK, task, temperature=1.0)
    assert 0.0 <= result["accuracy"] <= 1.0 and set(result["by_level"]) <= {1, 2}
