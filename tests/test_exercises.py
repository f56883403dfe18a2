"""The exercise checkers (companion.exercises) can pass and can fail: for each checker a correct
answer written as a learner would passes, the untouched stub says "not attempted yet", and typical
wrong answers fail with a hint that names the mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from companion import exercises as ex
from companion.bpe import get_stats
from companion.checkpoints import load_shipped
from companion.corpus import generate_corpus
from companion.data import encode_corpus, train_val_split
from companion.model import GPT, GPTConfig
from companion.pretraining import init_model, train
from companion.sft import fine_tune
from companion.tokenizer import BPETokenizer


def stub(*args):
    raise NotImplementedError


def verdict(capsys, checker, answer, *more) -> tuple[bool, str]:
    result = checker(answer, *more)
    return result, capsys.readouterr().out


# Chapter 1 ------------------------------------------------------------------------------------


def merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_keeps_second(ids, pair, new_id):  # forgets to skip the pair's second id
    out = []
    for i, a in enumerate(ids):
        out.append(new_id if i + 1 < len(ids) and (a, ids[i + 1]) == pair else a)
    return out


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_step(ids, new_id):
    counts = get_stats(ids)
    pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
    return pair, merge(ids, pair, new_id)


def bpe_step_plain_max(ids, new_id):
    counts = get_stats(ids)
    pair = max(counts, key=counts.get)
    return pair, merge(ids, pair, new_id)


def bpe_step_no_merge(ids, new_id):
    counts = get_stats(ids)
    return max(counts, key=lambda p: (counts[p], -p[0], -p[1])), ids


TRAIN_TEXT = generate_corpus(seed=0)[:20_000]  # enough text for 768 ids
SAMPLE = generate_corpus(seed=0)[30_000:31_000]


def tokens_with_vocab(vocab_size):
    return len(BPETokenizer.train(TRAIN_TEXT, vocab_size).encode(SAMPLE))


def test_merge(capsys):
    assert verdict(capsys, ex.check_merge, merge) == (True, "check_merge: passed (26 cases)\n")
    passed, out = verdict(capsys, ex.check_merge, merge_drops_last)
    assert not passed and "last id went missing" in out
    passed, out = verdict(capsys, ex.check_merge, merge_keeps_second)
    assert not passed and "skip both ids of the pair" in out


def test_bpe_step(capsys):
    assert verdict(capsys, ex.check_bpe_step, bpe_step)[0]
    passed, out = verdict(capsys, ex.check_bpe_step, bpe_step_plain_max)
    assert not passed and "break the tie towards the smallest pair" in out
    passed, out = verdict(capsys, ex.check_bpe_step, bpe_step_no_merge)
    assert not passed and "the textbook string" in out


def test_vocab_experiment(capsys):
    passed, out = verdict(capsys, ex.check_vocab_experiment, tokens_with_vocab, TRAIN_TEXT, SAMPLE)
    assert passed and "vocab_size  768" in out

    def merges_not_size(v):
        return tokens_with_vocab(v + 256)

    passed, out = verdict(capsys, ex.check_vocab_experiment, merges_not_size, TRAIN_TEXT, SAMPLE)
    assert not passed and "256 bytes + the merges" in out
    passed, out = verdict(
        capsys, ex.check_vocab_experiment, lambda v: len(SAMPLE), TRAIN_TEXT, SAMPLE
    )
    assert not passed and "expected: " in out


# Chapter 2 ------------------------------------------------------------------------------------


def attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def test_causal_mask(capsys):
    assert verdict(capsys, ex.check_causal_mask, lambda T: torch.ones(T, T).tril() == 1)[0]
    for wrong, hint in [
        (lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "wrong way round"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "keep the diagonal"),
        (lambda T: torch.ones(T, T).tril(), "return a bool tensor"),
        (lambda T: None, "did you forget `return`"),
    ]:
        passed, out = verdict(capsys, ex.check_causal_mask, wrong)
        assert not passed and hint in out, out


def test_attention(capsys):
    assert verdict(capsys, ex.check_attention, attention)[0]

    def unscaled(q, k, v, causal):
        return attention(q * math.sqrt(q.shape[-1]), k, v, causal)

    def over_queries(q, k, v, causal):
        weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-2)
        return weights @ v, weights

    def three_dims_only(q, k, v, causal):
        if q.dim() != 3:
            raise ValueError("expected (B, T, D)")
        return attention(q, k, v, causal)

    for wrong, hint in [
        (unscaled, "missing scaling"),
        (over_queries, "softmax over the wrong axis"),
        (three_dims_only, "ValueError: expected (B, T, D)"),
    ]:
        passed, out = verdict(capsys, ex.check_attention, wrong)
        assert not passed and hint in out, out


def top_weight(D, n_keys, scaled):
    q = torch.randn(2000, 1, D, generator=torch.Generator().manual_seed(7))
    k = torch.randn(2000, n_keys, D, generator=torch.Generator().manual_seed(8))
    scores = q @ k.transpose(-2, -1) / (math.sqrt(D) if scaled else 1.0)
    return scores.softmax(dim=-1).amax(dim=-1).mean().item()


def test_top_weight(capsys):
    passed, out = verdict(capsys, ex.check_top_weight, top_weight)
    assert passed and "uniform" in out
    passed, out = verdict(capsys, ex.check_top_weight, lambda D, n, s: top_weight(D, n, not s))
    assert not passed and "D=4, 4 keys, scaled" in out

    passed, out = verdict(capsys, ex.check_top_weight, lambda D, n, s: 1.0)
    assert not passed and "softmax over the keys" in out


# Chapter 3 ------------------------------------------------------------------------------------


def parameter_count(c):
    V, T, L, C, b = c.vocab_size, c.context_length, c.n_layer, c.d_model, int(c.bias)
    block = 3 * C * C + b * 3 * C + C * C + b * C + 8 * C * C + b * 5 * C + 2 * (C + b * C)
    return V * C + T * C + L * block + C + b * C


def layer_norm(x, weight, bias, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def embedding_share(n_layer, d_model):
    config = GPTConfig(1000, 32, n_layer, 4, d_model)
    return 1000 * d_model / parameter_count(config)


def test_parameter_count(capsys):
    assert verdict(capsys, ex.check_parameter_count, parameter_count)[0]
    for wrong, hint in [
        (lambda c: parameter_count(c) + c.vocab_size * c.d_model, "count it once"),
        (lambda c: parameter_count(c) - c.d_model * (1 + c.bias), "2·L + 1"),
        (lambda c: parameter_count(GPTConfig(**{**c.to_dict(), "bias": True})), "no biases"),
    ]:
        passed, out = verdict(capsys, ex.check_parameter_count, wrong)
        assert not passed and hint in out, out


def test_layer_norm(capsys):
    assert verdict(capsys, ex.check_layer_norm, layer_norm)[0]

    def unbiased(x, w, b, eps):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b

    def eps_outside(x, w, b, eps):
        std = x.std(-1, keepdim=True, unbiased=False)
        return (x - x.mean(-1, keepdim=True)) / (std + eps) * w + b

    def no_affine(x, w, b, eps):
        return layer_norm(x, 1.0, 0.0, eps)

    for wrong, hint in [
        (unbiased, "unbiased=False"),
        (eps_outside, "eps goes inside the square root"),
        (no_affine, "multiply by weight and add bias"),
        (lambda x, w, b, eps: layer_norm(x, w, b, eps).mean(-1), "should be (2, 5, 8), not (2, 5)"),
    ]:
        passed, out = verdict(capsys, ex.check_layer_norm, wrong)
        assert not passed and hint in out, out


def test_embedding_share(capsys):
    passed, out = verdict(capsys, ex.check_embedding_share, embedding_share)
    assert passed and "d_model 1024" in out
    for wrong, hint in [
        (lambda L, C: 2 * embedding_share(L, C) / (1 + embedding_share(L, C)), "count it once"),
        (lambda L, C: embedding_share(L, C) * 1032 / 1000, "not the position embedding"),
    ]:
        passed, out = verdict(capsys, ex.check_embedding_share, wrong)
        assert not passed and hint in out, out


# Chapter 4 ------------------------------------------------------------------------------------


def cross_entropy(logits, targets):
    log_probs = logits.log_softmax(dim=-1)
    return -log_probs.gather(-1, targets[..., None]).mean()


def learning_rate(step, c):
    if step < c.warmup_steps:
        return c.learning_rate * (step + 1) / c.warmup_steps
    end = c.steps if c.decay_steps is None else c.decay_steps
    if step >= end:
        return c.min_learning_rate
    progress = (step - c.warmup_steps) / (end - c.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return c.min_learning_rate + (c.learning_rate - c.min_learning_rate) * cosine


def adamw_step(param, grad, m, v, t, lr, weight_decay):
    param = param * (1 - lr * weight_decay)
    m = 0.9 * m + 0.1 * grad
    v = 0.95 * v + 0.05 * grad**2
    m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.95**t)
    return param - lr * m_hat / (v_hat.sqrt() + 1e-8), m, v


def test_cross_entropy(capsys):
    assert verdict(capsys, ex.check_cross_entropy, cross_entropy)[0]
    for wrong, hint in [
        (lambda lg, t: cross_entropy(lg, t) * t.numel(), "do not sum"),
        (lambda lg, t: -lg.softmax(-1).log().gather(-1, t[..., None]).mean(), "log_softmax"),
        (lambda lg, t: -cross_entropy(lg, t), "MINUS the log-probability"),
    ]:
        passed, out = verdict(capsys, ex.check_cross_entropy, wrong)
        assert not passed and hint in out, out


def test_learning_rate(capsys):
    assert verdict(capsys, ex.check_learning_rate, learning_rate)[0]

    def off_by_one(step, c):
        return c.learning_rate * step / c.warmup_steps if step < c.warmup_steps else 0.0

    def no_floor(step, c):
        return (
            learning_rate(step, c)
            if step < c.warmup_steps
            else learning_rate(step, type(c)(**{**c.to_dict(), "min_learning_rate": 0.0}))
        )

    for wrong, hint in [(off_by_one, "(step + 1)"), (no_floor, "not to 0")]:
        passed, out = verdict(capsys, ex.check_learning_rate, wrong)
        assert not passed and hint in out, out


def test_adamw_step(capsys):
    assert verdict(capsys, ex.check_adamw_step, adamw_step)[0]

    def no_correction(param, grad, m, v, t, lr, wd):
        return adamw_step(param, grad, m, v, 10**9, lr, wd)

    def adam_l2(param, grad, m, v, t, lr, wd):
        return adamw_step(param, grad + wd * param, m, v, t, lr, 0.0)

    for wrong, hint in [(no_correction, "bias correction"), (adam_l2, "Adam with L2")]:
        passed, out = verdict(capsys, ex.check_adamw_step, wrong)
        assert not passed and hint in out, out


@pytest.fixture(scope="module")
def tokens():
    return train_val_split(encode_corpus(), 0.1)


def test_learning_rate_experiment(capsys, tokens):
    train_tokens, val_tokens = tokens

    def final_val_loss(lr, which="val"):
        model_config, train_config = ex.learning_rate_experiment_configs(768, lr)
        model = init_model(model_config, seed=0, device="cpu")
        history = train(model, train_tokens, val_tokens, train_config, progress=False)
        return history.val_loss[-1] if which == "val" else history.train_loss[-1]

    passed, out = verdict(capsys, ex.check_learning_rate_experiment, final_val_loss, *tokens)
    assert passed and "learning rate 0.03" in out
    passed, out = verdict(
        capsys, ex.check_learning_rate_experiment, lambda lr: final_val_loss(lr, "train"), *tokens
    )
    assert not passed and "not the train loss" in out
    passed, out = verdict(
        capsys, ex.check_learning_rate_experiment, lambda lr: final_val_loss(3e-3), *tokens
    )
    assert not passed and "every rate gave the same loss" in out


# Chapter 5 ------------------------------------------------------------------------------------


def trained_tokens(messages, tokenizer):
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    return sum(len(tokenizer.encode_ordinary(" " + reply)) + 1 for reply in replies)


def loss_mask(ids, assistant_id, end_id):
    mask, inside = torch.zeros(len(ids), dtype=torch.bool), False
    for t, i in enumerate(ids.tolist()):
        if i == assistant_id:
            inside = True
        elif inside:
            mask[t] = True
            inside = i != end_id
    return mask


def sft_batch(examples, pad_id, train_on_prompt):
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id)
    y = torch.full((len(examples), T), -100)
    for b, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[b, :n] = ids[:-1]
        y[b, :n] = torch.where(mask[1:] | train_on_prompt, ids[1:], -100)
    return x, y


def test_trained_tokens(capsys):
    assert verdict(capsys, ex.check_trained_tokens, trained_tokens)[0]

    def no_end(messages, tokenizer):
        return trained_tokens(messages, tokenizer) - sum(m["role"] == "assistant" for m in messages)

    def no_space(messages, tokenizer):
        return sum(
            len(tokenizer.encode_ordinary(m["content"])) + 1
            for m in messages
            if m["role"] == "assistant"
        )

    def every_message(messages, tokenizer):
        return trained_tokens([{**m, "role": "assistant"} for m in messages], tokenizer)

    for wrong, hint in [
        (no_end, "closing <|end|> is trained too"),
        (no_space, "a space before the content"),
        (every_message, "not the user's"),
        (lambda messages, tokenizer: 15, "the docstring's chat"),
    ]:
        passed, out = verdict(capsys, ex.check_trained_tokens, wrong)
        assert not passed and hint in out, out


def test_loss_mask(capsys):
    assert verdict(capsys, ex.check_loss_mask, loss_mask)[0]

    def with_marker(ids, assistant_id, end_id):
        return loss_mask(ids, assistant_id, end_id) | (ids == assistant_id)

    def no_end(ids, assistant_id, end_id):
        return loss_mask(ids, assistant_id, end_id) & (ids != end_id)

    def every_token_after(ids, assistant_id, end_id):  # forgets that <|end|> closes the reply
        seen = (ids == assistant_id).cumsum(0) > 0
        return seen & (ids != assistant_id)

    for wrong, hint in [
        (with_marker, "marker itself is not trained"),
        (no_end, "closing <|end|> of a reply is trained too"),
        (lambda ids, a, e: loss_mask(ids, a, e).long(), "return a bool tensor"),
        (every_token_after, "two exchanges"),
    ]:
        passed, out = verdict(capsys, ex.check_loss_mask, wrong)
        assert not passed and hint in out, out


def test_sft_batch(capsys):
    assert verdict(capsys, ex.check_sft_batch, sft_batch)[0]

    def unshifted_mask(examples, pad_id, train_on_prompt):
        return sft_batch([(i, torch.cat([m[:1], m[:-1]])) for i, m in examples], pad_id,
                         train_on_prompt)  # fmt: skip

    def pad_targets(examples, pad_id, train_on_prompt):
        x, y = sft_batch(examples, pad_id, train_on_prompt)
        lengths = torch.tensor([len(i) - 1 for i, _ in examples])
        padding = torch.arange(x.shape[1]) >= lengths[:, None]
        return x, y.masked_fill(padding, pad_id)

    def not_shifted(examples, pad_id, train_on_prompt):  # y = ids[:-1], the inputs again
        x, y = sft_batch(examples, pad_id, train_on_prompt)
        return x, torch.where(y == -100, -100, x)

    for wrong, hint in [
        (unshifted_mask, "shift the mask with the targets"),
        (pad_targets, "never pad_id"),
        (not_shifted, "the docstring's batch of two"),
        (lambda e, p, t: sft_batch(e, p, t)[0], "expected: (tensor"),
    ]:
        passed, out = verdict(capsys, ex.check_sft_batch, wrong)
        assert not passed and hint in out, out


def short_run(steps, which="val"):
    model, tokenizer = load_shipped("base", "cpu")
    history = fine_tune(model, tokenizer, *ex.short_run_configs(steps), progress=False)
    return history.val_loss[-1] if which == "val" else history.train_loss[-1]


def test_short_run(capsys):
    """Wrong answers fail on the first case (10 steps, a few seconds); the right one passes in
    solutions/05_sft_solutions.ipynb, which the suite runs (three runs of 10 to 90 steps)."""
    passed, out = verdict(capsys, ex.check_short_run, lambda steps: short_run(steps, "train"))
    assert not passed and "not the train loss" in out
    passed, out = verdict(capsys, ex.check_short_run, lambda steps: short_run(30))
    assert not passed and "short_run_configs(steps)" in out


# Chapter 6 ------------------------------------------------------------------------------------


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    return -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return bradley_terry_loss(chosen, rejected), chosen.detach(), rejected.detach()


def gae(rewards, values, mask, gamma, lam):
    advantages = torch.zeros_like(rewards)
    B, T = rewards.shape
    next_value, next_advantage = torch.zeros(B), torch.zeros(B)
    for t in reversed(range(T)):
        real = mask[:, t].float()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * real
        next_value, next_advantage = values[:, t] * real, advantages[:, t]
    return advantages, advantages + values * mask


def dpo_shift(beta, steps=ex.DPO_TOY_STEPS):
    ref_logits, chosen, rejected = ex.toy_preferences()
    ref = ref_logits.log_softmax(-1)
    logits = ref_logits.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=ex.DPO_TOY_LR)
    for _ in range(steps):
        logp = logits.log_softmax(-1)
        loss = dpo_loss(logp[chosen], logp[rejected], ref[chosen], ref[rejected], beta)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logp = logits.detach().log_softmax(-1)
    return ((logp[0] - logp[1]) - (ref[0] - ref[1])).item()


def test_bradley_terry_loss(capsys):
    assert verdict(capsys, ex.check_bradley_terry_loss, bradley_terry_loss)[0]
    for wrong, hint in [
        (lambda c, r: bradley_terry_loss(r, c), "the chosen reply should win"),
        (lambda c, r: bradley_terry_loss(c, r) * len(c), "do not sum"),
        (lambda c, r: -torch.sigmoid(c - r).log().mean(), "use F.logsigmoid"),
    ]:
        passed, out = verdict(capsys, ex.check_bradley_terry_loss, wrong)
        assert not passed and hint in out, out


def test_dpo_loss(capsys):
    assert verdict(capsys, ex.check_dpo_loss, dpo_loss)[0]

    def no_reference(pc, pr, rc, rr, beta):
        return dpo_loss(pc, pr, 0 * rc, 0 * rr, beta)

    def beta_outside(pc, pr, rc, rr, beta):
        loss, c, r = dpo_loss(pc, pr, rc, rr, 1.0)
        return beta * loss, beta * c, beta * r

    for wrong, hint in [
        (no_reference, "subtract the reference's log-probability"),
        (lambda pc, pr, rc, rr, b: dpo_loss(rc, rr, pc, pr, b), "not the other way round"),
        (beta_outside, "not the loss outside it"),
        (lambda pc, pr, rc, rr, b: dpo_loss(pc, pr, rc, rr, b)[0], "return three things"),
    ]:
        passed, out = verdict(capsys, ex.check_dpo_loss, wrong)
        assert not passed and hint in out, out


def test_gae(capsys):
    assert verdict(capsys, ex.check_gae, gae)[0]
    for wrong, hint in [
        (lambda r, v, m, g, lam: gae(r, v, torch.ones_like(m), g, lam), "outside the mask"),
        (lambda r, v, m, g, lam: gae(r, v, m, g, 1.0), "multiply by λ too"),
        (lambda r, v, m, g, lam: gae(r, v, m, g, lam)[0], "return two tensors"),
    ]:
        passed, out = verdict(capsys, ex.check_gae, wrong)
        assert not passed and hint in out, out


def test_dpo_beta(capsys):
    passed, out = verdict(capsys, ex.check_dpo_beta, dpo_shift)
    assert passed and "ln 3 / β" in out
    for wrong, hint in [
        (lambda b: dpo_shift(0.1), "every β gave the same shift"),
        (lambda b: -dpo_shift(b), "the reply chosen more often"),
        (lambda b: dpo_shift(b, steps=50), "β = 0.1"),
    ]:
        passed, out = verdict(capsys, ex.check_dpo_beta, wrong)
        assert not passed and hint in out, out


# Chapter 7 ------------------------------------------------------------------------------------


def kv_bytes_per_token(config, dtype):
    return 2 * config.n_layer * config.d_model * torch.empty((), dtype=dtype).element_size()


def filtered_probs(logits, temperature, top_k, top_p):
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # ties with the k-th stay
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if top_p is not None:
        ordered = probs.sort(dim=-1, descending=True).values
        before = ordered.cumsum(dim=-1) - ordered  # the mass of the more likely tokens
        smallest = ordered.gather(-1, (before < top_p).sum(-1, keepdim=True) - 1)
        probs = probs.masked_fill(probs < smallest, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def attend_step(q, k, v, past_k, past_v):
    keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    T, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)  # bottom-right
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values, keys, values


def test_kv_bytes(capsys):
    passed, out = verdict(capsys, ex.check_kv_bytes, kv_bytes_per_token)
    assert passed and "73,728 bytes per token" in out
    for wrong, hint in [
        (lambda c, d: kv_bytes_per_token(c, d) // 2, "keys AND values"),
        (lambda c, d: kv_bytes_per_token(c, torch.float32), "depend on dtype"),
        (lambda c, d: kv_bytes_per_token(c, d) * c.n_head, "not H · C"),
        (lambda c, d: kv_bytes_per_token(c, d) * c.context_length, "not the whole context"),
        (lambda c, d: kv_bytes_per_token(c, d) * 8, "bytes, not bits"),
        (lambda c, d: float(kv_bytes_per_token(c, d)) + 1, "one layer, one head"),
    ]:
        passed, out = verdict(capsys, ex.check_kv_bytes, wrong)
        assert not passed and hint in out, out


def test_filtered_probs(capsys):
    assert verdict(capsys, ex.check_filtered_probs, filtered_probs) == (
        True,
        "check_filtered_probs: passed (15 cases)\n",
    )

    def top_k_no_ties(logits, t, k, p):
        if k is None or t == 0:
            return filtered_probs(logits, t, k, p)
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(k).indices, True)
        return filtered_probs(logits.masked_fill(~kept, float("-inf")), t, None, p)

    def top_p_first(logits, t, k, p):  # top-p on the model's own distribution
        if p is None or t == 0:
            return filtered_probs(logits, t, k, p)
        kept = filtered_probs(logits, 1.0, None, p) > 0
        return filtered_probs(logits.masked_fill(~kept, float("-inf")), t, k, None)

    def greedy_divides(logits, t, k, p):
        return filtered_probs(logits, t or 1e-45, k, p)

    for wrong, hint in [
        (top_k_no_ties, "tied with the k-th"),
        (top_p_first, "after the temperature"),
        (lambda lg, t, k, p: filtered_probs(lg, 1 / t if t else 0, k, p), "DIVIDE the logits"),
        (greedy_divides, "not finite"),
    ]:
        passed, out = verdict(capsys, ex.check_filtered_probs, wrong)
        assert not passed and hint in out, out


def test_attend_step(capsys):
    assert verdict(capsys, ex.check_attend_step, attend_step)[0]

    def only_past(q, k, v, past_k, past_v):
        out = attend_step(q, past_k, past_v, past_k[:, :, :0], past_v[:, :, :0])[0]
        return out, torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)

    def top_left(q, k, v, past_k, past_v):
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, is_causal=True)
        return out, keys, values

    def cache_not_extended(q, k, v, past_k, past_v):
        return attend_step(q, k, v, past_k, past_v)[0], past_k, past_v

    for wrong, hint in [
        (only_past, "append the new keys and values first"),
        (top_left, "align the causal mask bottom-right"),
        (cache_not_extended, "the S stored and the T new ones"),
        (lambda *a: attend_step(*a)[0], "return three tensors"),
    ]:
        passed, out = verdict(capsys, ex.check_attend_step, wrong)
        assert not passed and hint in out, out


@pytest.fixture(scope="module")
def tiny_generator():
    """A random tiny GPT with the course tokenizer, for the top-p experiment's checker."""
    from companion.data import load_course_tokenizer
    from companion.world import build_world

    tokenizer = load_course_tokenizer()
    torch.manual_seed(0)
    config = GPTConfig(tokenizer.vocab_size, 32, 1, 2, 16)
    return GPT(config).eval(), tokenizer, build_world(0)


def test_top_p_experiment(capsys, tiny_generator):
    from companion.environment import make_generator
    from companion.generation import generate

    model, tokenizer, world = tiny_generator

    def right_share(top_p, pass_top_p=True):
        right = 0
        for fact in ex.top_p_experiment_facts(world):
            prompt = torch.tensor([tokenizer.encode(fact.prompt)])
            out = generate(
                model,
                prompt.expand(10, -1),
                6,
                temperature=1.0,
                top_p=top_p if pass_top_p else None,
                generator=make_generator(0),
            )
            texts = [tokenizer.decode(row[prompt.shape[1] :].tolist()) for row in out]
            right += sum(fact.answer in text for text in texts)
        return right / 200

    more = (model, tokenizer, world)
    passed, out = verdict(capsys, ex.check_top_p_experiment, right_share, *more)
    assert passed and "distinct completions of 200" in out
    passed, out = verdict(capsys, ex.check_top_p_experiment, lambda p: 200 * right_share(p), *more)
    assert not passed and "not the count" in out
    with pytest.raises(TypeError, match="pass cached"):
        ex.check_top_p_experiment(right_share, None, tokenizer, world)


# Chapter 8 ------------------------------------------------------------------------------------


def group_advantages(rewards):
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)  # (B, 1)
    return torch.where(std > 0, (rewards - mean) / std, 0.0)


def grpo_loss(logp, old_logp, advantages, mask, clip):
    ratio = torch.exp(logp - old_logp)  # (N, T)
    A = advantages[:, None]  # (N, 1)
    objective = torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
    m = mask.float()
    return -(objective * m).sum() / m.sum()


def pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_group_advantages(capsys):
    passed, out = verdict(capsys, ex.check_group_advantages, group_advantages)
    assert passed, out

    def with_eps(rewards, eps):
        mean = rewards.mean(dim=1, keepdim=True)
        return (rewards - mean) / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)

    assert verdict(capsys, ex.check_group_advantages, lambda r: with_eps(r, 1e-6))[0]

    def unbiased(rewards):
        std = rewards.std(dim=1, keepdim=True)
        return torch.where(std > 0, (rewards - rewards.mean(dim=1, keepdim=True)) / std, 0.0)

    def over_batch(rewards):
        mean, std = rewards.mean(dim=0), rewards.std(dim=0, unbiased=False)
        return (rewards - mean) / std

    def unguarded(rewards):
        mean = rewards.mean(dim=1, keepdim=True)
        return (rewards - mean) / rewards.std(dim=1, unbiased=False, keepdim=True)

    for wrong, hint in [
        (unbiased, "not by G − 1"),
        (lambda r: r - r.mean(dim=1, keepdim=True), "divide by the group's standard deviation"),
        (over_batch, "not over the batch"),
        (unguarded, "0 / 0 is NaN"),
        (lambda r: with_eps(r, 1e-4), "an eps added to the std?"),
        (lambda r: group_advantages(r)[:, :1], "should be (2, 4), not (2, 1)"),
        (lambda r: group_advantages(r).half(), "your tensor is torch.float16"),
    ]:
        passed, out = verdict(capsys, ex.check_group_advantages, wrong)
        assert not passed and hint in out, out


def test_grpo_loss(capsys):
    from companion.grpo import grpo_loss as reference

    assert verdict(capsys, ex.check_grpo_loss, grpo_loss)[0]
    assert verdict(capsys, ex.check_grpo_loss, lambda *a: reference(*a[:4], clip=a[4])[0])[0]

    def sample_mean(logp, old_logp, advantages, mask, clip):  # DeepSeekMath's
        ratio = torch.exp(logp - old_logp)
        A = advantages[:, None]
        objective = torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
        m = mask.float()
        return -((objective * m).sum(dim=1) / m.sum(dim=1)).mean()

    def no_clip(logp, old_logp, advantages, mask, clip):
        return grpo_loss(logp, old_logp, advantages, mask, 100.0)

    def maximum(logp, old_logp, advantages, mask, clip):
        ratio = torch.exp(logp - old_logp)
        A = advantages[:, None]
        objective = torch.maximum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
        return -(objective * mask).sum() / mask.sum()

    def every_position(logp, old_logp, advantages, mask, clip):
        ratio = torch.exp(logp - old_logp)
        A = advantages[:, None]
        return -torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A).mean()

    def over_positions(logp, old_logp, advantages, mask, clip):  # padding counted as 0
        ratio = torch.exp(logp - old_logp)
        A = advantages[:, None]
        return -(torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A) * mask).mean()

    for wrong, hint in [
        (no_clip, "clip the ratio to [1 − ε, 1 + ε]"),
        (over_positions, "divide by mask.sum(), not by every position N·T"),
        (maximum, "not the max"),
        (every_position, "the prompt and the padding are not the reply"),
        (sample_mean, "the token-mean, DAPO's"),
        (lambda *a: -grpo_loss(*a), "MINUS the objective"),
        (lambda *a: grpo_loss(*a).reshape(1), "should be (), not (1,)"),
    ]:
        passed, out = verdict(capsys, ex.check_grpo_loss, wrong)
        assert not passed and hint in out, out


def test_pass_at_k(capsys):
    assert verdict(capsys, ex.check_pass_at_k, pass_at_k)[0]

    def product(n, c, k):  # another exact method
        miss = 1.0
        for i in range(k):
            miss *= (n - c - i) / (n - i)
        return 1.0 - miss

    assert verdict(capsys, ex.check_pass_at_k, product)[0]

    def through_floats(n, c, k):
        def comb(a, b):
            if b > a:
                return 0.0
            f = math.factorial
            return float(f(a)) / (float(f(b)) * float(f(a - b)))

        return 1 - comb(n - c, k) / comb(n, k)

    def float32(n, c, k):
        return torch.tensor(pass_at_k(n, c, k), dtype=torch.float32).item()

    for wrong, hint in [
        (lambda n, c, k: 1 - (1 - c / n) ** k, "WITHOUT replacement"),
        (lambda n, c, k: c / n, "c / n is pass@1"),
        (lambda n, c, k: min(1.0, k * c / n), "it is not the chance"),
        (through_floats, "OverflowError"),
        (float32, "right to about 7 digits only"),
    ]:
        passed, out = verdict(capsys, ex.check_pass_at_k, wrong)
        assert not passed and hint in out, out
    passed, out = verdict(capsys, ex.check_pass_at_k, through_floats)
    assert "200! ≈ 8·10^374" in out, out


@pytest.fixture(scope="module")
def reasoning_setup():
    """The shipped reasoning model and 4 of the held-out questions (the notebook asks 24): each
    typical mistake below still gives another share than the vote on one of the temperatures."""
    from companion.reasoning import split_people, two_hop_questions
    from companion.world import build_world

    reasoner, tokenizer = load_shipped("reasoning", "cpu")
    questions = two_hop_questions(split_people(build_world(0), seed=0)[1])[:4]
    return reasoner, tokenizer, questions


def test_temperature_experiment(capsys, reasoning_setup):
    from collections import Counter

    from companion.reasoning import majority_vote, sample_answers

    reasoner, tokenizer, questions = reasoning_setup
    drawn = {}  # temperature -> samples: the answers below share one draw per temperature

    def samples_at(temperature):
        if temperature not in drawn:
            drawn[temperature] = sample_answers(
                reasoner, tokenizer, questions, 16, temperature=temperature, seed=0
            )
        return drawn[temperature]

    def vote_accuracy(temperature, vote=majority_vote):
        rows = samples_at(temperature)
        right = [
            vote([s.answer for s in row]) == q.answer
            for q, row in zip(questions, rows, strict=True)
        ]
        return sum(right) / len(questions)

    more = (reasoner, tokenizer, questions)
    passed, out = verdict(capsys, ex.check_temperature_experiment, vote_accuracy, *more)
    assert passed and "greedy (temperature 0)" in out and "temperature 1.5: vote" in out, out

    def single(temperature):
        rows = samples_at(temperature)
        right = [s.answer == q.answer for q, row in zip(questions, rows, strict=True) for s in row]
        return sum(right) / len(right)

    def none_votes(answers):
        return Counter(answers).most_common(1)[0][0]

    for wrong, hint in [
        (lambda t: vote_accuracy(1.0), "pass temperature to sample_answers"),
        (single, "vote first"),
        (lambda t: vote_accuracy(t, vote=lambda answers: answers[0]), "first reply alone"),
        (lambda t: vote_accuracy(t, vote=none_votes), "leave the malformed replies (None) out"),
        (lambda t: 100 * vote_accuracy(t), "not a percentage"),
        (lambda t: len(questions) * vote_accuracy(t), "not the count"),
    ]:
        passed, out = verdict(capsys, ex.check_temperature_experiment, wrong, *more)
        assert not passed and hint in out, out
    with pytest.raises(TypeError, match="pass reasoner"):
        ex.check_temperature_experiment(vote_accuracy, None, tokenizer, questions)


# Chapter 9 ------------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def gqa_kv_bytes(config, dtype):
    head_size = config.d_model // config.n_head
    number = torch.empty((), dtype=dtype).element_size()
    return 2 * config.n_layer * config.n_kv_head * head_size * number


def dequantize_block(block):
    d = block[0:2].view(np.float16)[0].astype(np.float32)
    m = block[2:4].view(np.float16)[0].astype(np.float32)
    q = np.concatenate([block[4:] & 0x0F, block[4:] >> 4]).astype(np.float32)
    return d * q + m  # a numpy array: the checker takes it as well as a tensor


def rope(x, start, base):
    T, D = x.shape[-2], x.shape[-1]
    angles = torch.outer(
        torch.arange(start, start + T).float(), base ** (-torch.arange(0, D, 2).float() / D)
    )  # (T, D/2)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # (T, D)
    rotated = torch.cat([-x[..., D // 2 :], x[..., : D // 2]], dim=-1)
    return x * cos + rotated * sin


def test_rms_norm(capsys):
    assert verdict(capsys, ex.check_rms_norm, rms_norm)[0]
    for wrong, hint in [
        (lambda x, w, eps: rms_norm(x - x.mean(-1, keepdim=True), w, eps), "not subtract the mean"),
        (lambda x, w, eps: rms_norm(x, 1.0, eps), "multiply by weight"),
        (lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w, "inside the"),
        (lambda x, w, eps: rms_norm(x, w, eps).sum(-1), "should be (1, 4), not (1,)"),
    ]:
        passed, out = verdict(capsys, ex.check_rms_norm, wrong)
        assert not passed and hint in out, out


def test_gqa_kv_bytes(capsys):
    passed, out = verdict(capsys, ex.check_gqa_kv_bytes, gqa_kv_bytes)
    assert passed and "46,080 bytes per token" in out
    for wrong, hint in [
        (kv_bytes_per_token, "only the n_kv_head key/value heads"),
        (lambda c, d: gqa_kv_bytes(c, d) // 2, "keys AND values"),
        (lambda c, d: gqa_kv_bytes(c, d) * c.n_head, "D = C / n_head numbers, not C"),
        (lambda c, d: gqa_kv_bytes(c, torch.float32), "depend on dtype"),
    ]:
        passed, out = verdict(capsys, ex.check_gqa_kv_bytes, wrong)
        assert not passed and hint in out, out


def test_dequantize_block(capsys):
    assert verdict(capsys, ex.check_dequantize_block, dequantize_block)[0]
    assert verdict(capsys, ex.check_dequantize_block, lambda b: torch.tensor(dequantize_block(b)))[
        0
    ]

    def interleaved(block):
        q = np.stack([block[4:] & 0x0F, block[4:] >> 4], axis=1).reshape(-1)
        d = block[0:2].view(np.float16)[0].astype(np.float32)
        m = block[2:4].view(np.float16)[0].astype(np.float32)
        return d * q.astype(np.float32) + m

    def in_float16(block):
        d, m = block[0:2].view(np.float16)[0], block[2:4].view(np.float16)[0]
        return d * np.concatenate([block[4:] & 0x0F, block[4:] >> 4]).astype(np.float16) + m

    def no_minimum(block):
        return dequantize_block(block) - block[2:4].view(np.float16)[0].astype(np.float32)

    for wrong, hint in [
        (interleaved, "LOW nibbles of the 16 bytes"),
        (in_float16, "float16 arithmetic"),
        (no_minimum, "add the minimum m"),
        (lambda block: dequantize_block(block)[:16], "the docstring's block"),
    ]:
        passed, out = verdict(capsys, ex.check_dequantize_block, wrong)
        assert not passed and hint in out, out


def test_rope(capsys):
    assert verdict(capsys, ex.check_rope, rope)[0]

    def adjacent(x, start, base):  # llama.cpp's pairs: channels (0, 1), (2, 3) ...
        D = x.shape[-1]
        order = torch.arange(D).reshape(2, D // 2).T.flatten()  # 0, D/2, 1, D/2 + 1 ...
        return rope(x[..., order], start, base)[..., order.argsort()]

    for wrong, hint in [
        (lambda x, start, base: rope(x, -start, base), "the wrong way"),
        (lambda x, start, base: rope(x, start + 1, base), "not start + 1"),
        (lambda x, start, base: rope(x, 0, base), "row t sits at position start + t"),
        (lambda x, start, base: rope(x, start, base**0.5), "base^(-2i/D)"),
    ]:
        passed, out = verdict(capsys, ex.check_rope, wrong)
        assert not passed and hint in out, out
    passed, out = verdict(capsys, ex.check_rope, adjacent)
    assert not passed and "not adjacent channels" in out


def test_top_p_paris(capsys):
    from companion.environment import make_generator
    from companion.generation import generate

    tokenizer = BPETokenizer(
        [], pattern=None, special_tokens={"<|im_start|>": 256, "<|im_end|>": 257}
    )
    torch.manual_seed(0)
    model = GPT(GPTConfig(258, 128, 1, 2, 16)).eval()
    end = 257

    def paris_share(top_p):
        from companion.chat import SMOLLM2_CHAT, question_ids

        asked = torch.tensor(
            [question_ids("What is the capital of France?", tokenizer, template=SMOLLM2_CHAT)]
        )
        out = generate(
            model,
            asked.expand(10, -1),
            8,
            temperature=1.0,
            top_p=top_p,
            stop_tokens=[end],
            generator=make_generator(0),
        )
        replies = [
            tokenizer.decode([i for i in row[asked.shape[1] :].tolist() if i != end]) for row in out
        ]
        return sum("Paris" in r for r in replies) / 10

    passed, out = verdict(capsys, ex.check_top_p_paris, paris_share, model, tokenizer)
    assert passed and "say Paris; first words" in out
    passed, out = verdict(capsys, ex.check_top_p_paris, lambda p: 0.5, model, tokenizer)
    assert not passed and "top_p 0.1" in out
    with pytest.raises(TypeError, match="pass model, chapter 9's SmolLM2"):
        ex.check_top_p_paris(paris_share, "model", tokenizer)


# Every checker: the stub, and input that is not a function ------------------------------------

CHECKERS = [
    (ex.check_merge, ()),
    (ex.check_bpe_step, ()),
    (ex.check_vocab_experiment, (TRAIN_TEXT, SAMPLE)),
    (ex.check_causal_mask, ()),
    (ex.check_attention, ()),
    (ex.check_top_weight, ()),
    (ex.check_parameter_count, ()),
    (ex.check_layer_norm, ()),
    (ex.check_embedding_share, ()),
    (ex.check_cross_entropy, ()),
    (ex.check_learning_rate, ()),
    (ex.check_adamw_step, ()),
    (ex.check_learning_rate_experiment, (None, None)),
    (ex.check_trained_tokens, ()),
    (ex.check_loss_mask, ()),
    (ex.check_sft_batch, ()),
    (ex.check_short_run, ()),
    (ex.check_bradley_terry_loss, ()),
    (ex.check_dpo_loss, ()),
    (ex.check_gae, ()),
    (ex.check_dpo_beta, ()),
    (ex.check_kv_bytes, ()),
    (ex.check_filtered_probs, ()),
    (ex.check_attend_step, ()),
    (ex.check_top_p_experiment, (None, None, None)),
    (ex.check_group_advantages, ()),
    (ex.check_grpo_loss, ()),
    (ex.check_pass_at_k, ()),
    (ex.check_temperature_experiment, (None, None, None)),
    (ex.check_rms_norm, ()),
    (ex.check_gqa_kv_bytes, ()),
    (ex.check_dequantize_block, ()),
    (ex.check_rope, ()),
    (ex.check_top_p_paris, (None, None)),
]


def test_a_stub_called_by_an_answer_is_named(capsys):
    def uses_stub(q, k, v, causal):
        stub(q.shape[-2])  # an earlier exercise's stub, still to do
        return attention(q, k, v, causal)

    passed, out = verdict(capsys, ex.check_attention, uses_stub)
    assert not passed and "your function calls stub, which is still a stub" in out


def test_an_answer_of_the_wrong_type_fails_without_raising(capsys):
    passed, out = verdict(capsys, ex.check_merge, lambda ids, pair, new_id: torch.tensor(ids))
    assert not passed and "received: tensor" in out


def test_every_checker_is_tested():
    names = {name for name in dir(ex) if name.startswith("check_")}
    assert names == {checker.__name__ for checker, _ in CHECKERS}


@pytest.mark.parametrize("checker, more", CHECKERS, ids=lambda c: getattr(c, "__name__", ""))
def test_stub_is_not_attempted_yet(capsys, checker, more):
    passed, out = verdict(capsys, checker, stub, *more)
    assert passed is False and "not attempted yet" in out


@pytest.mark.parametrize("checker, more", CHECKERS, ids=lambda c: getattr(c, "__name__", ""))
def test_bad_input_gets_a_clear_message(capsys, checker, more):
    passed, out = verdict(capsys, checker, 42, *more)
    assert passed is False and "expected a function, got int" in out

    def no_arguments():
        return 0

    passed, out = verdict(capsys, checker, no_arguments, *more)
    assert passed is False and "cannot be called as" in out


# Hostile answers: the wrong dtype, a number for a tensor, a tensor for a number ----------------


def test_float16_answer_is_held_to_float32_tolerances(capsys):
    # assert_close left to choose would take float16's rtol 1e-3 and pass this imprecise answer
    def loss_float16(chosen_rewards, rejected_rewards):
        return bradley_terry_loss(chosen_rewards.half(), rejected_rewards.half())

    passed, out = verdict(capsys, ex.check_bradley_terry_loss, loss_float16)
    assert not passed and "float16" in out, out


def test_sft_batch_needs_int64(capsys):
    def float_batch(examples, pad_id, train_on_prompt):
        x, y = sft_batch(examples, pad_id, train_on_prompt)
        return x.float(), y.float()

    passed, out = verdict(capsys, ex.check_sft_batch, float_batch)
    assert not passed and "int64" in out, out


def test_number_for_a_tensor_is_named(capsys):
    def loss_item(chosen_rewards, rejected_rewards):
        return bradley_terry_loss(chosen_rewards, rejected_rewards).item()

    passed, out = verdict(capsys, ex.check_bradley_terry_loss, loss_item)
    assert not passed and "not a Python number" in out, out


def test_tensor_for_a_number_is_named(capsys):
    def bytes_tensor(config, dtype):
        return torch.tensor(kv_bytes_per_token(config, dtype))

    passed, out = verdict(capsys, ex.check_kv_bytes, bytes_tensor)
    assert not passed and ".item()" in out, out


def test_numpy_integer_bytes_pass(capsys):
    def numpy_bytes(config, dtype):  # np.prod of the shape, as a learner may write it
        return np.int64(kv_bytes_per_token(config, dtype))

    assert verdict(capsys, ex.check_kv_bytes, numpy_bytes)[0]
    passed, out = verdict(capsys, ex.check_kv_bytes, lambda c, d: np.int64(1))
    assert not passed and "expected" in out, out


def test_loss_mask_as_a_list_is_named(capsys):
    def mask_list(ids, assistant_id, end_id):
        return loss_mask(ids, assistant_id, end_id).tolist()

    passed, out = verdict(capsys, ex.check_loss_mask, mask_list)
    assert not passed and "return a torch tensor" in out, out


# Hostile answers to chapters 1-4: the wrong kind of value gets a hint naming it ------------------


@pytest.mark.parametrize(
    "wrong, named",
    [
        (lambda ids, pair, new_id: (i for i in merge(ids, pair, new_id)), "not a generator"),
        (lambda ids, pair, new_id: tuple(merge(ids, pair, new_id)), "not a tuple"),
        (lambda ids, pair, new_id: np.array(merge(ids, pair, new_id)), "not a ndarray"),
    ],
)
def test_merge_of_the_wrong_kind_is_named(capsys, wrong, named):
    passed, out = verdict(capsys, ex.check_merge, wrong)
    assert not passed and f"return a list, {named}" in out, out


def test_bpe_step_pair_as_a_list_is_named(capsys):
    def pair_as_list(ids, new_id):
        pair, new_ids = bpe_step(ids, new_id)
        return list(pair), new_ids

    passed, out = verdict(capsys, ex.check_bpe_step, pair_as_list)
    assert not passed and "return a tuple, not a list" in out, out


def test_attention_without_weights_is_named(capsys):
    passed, out = verdict(capsys, ex.check_attention, lambda q, k, v, c: attention(q, k, v, c)[0])
    assert not passed and "return a tuple of 2 values, not a Tensor" in out, out


def test_float16_layer_norm_is_named(capsys):
    def half(x, weight, bias, eps):
        return layer_norm(x, weight, bias, eps).half()

    passed, out = verdict(capsys, ex.check_layer_norm, half)
    assert not passed and "your tensor is torch.float16" in out, out


def test_additive_mask_is_named(capsys):
    def additive(T):
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        return torch.zeros(T, T).masked_fill(~allowed, float("-inf"))

    passed, out = verdict(capsys, ex.check_causal_mask, additive)
    assert not passed and "additive mask" in out, out


def test_parameter_count_as_a_tensor_is_named(capsys):
    def as_tensor(config):
        return torch.tensor(parameter_count(config))

    passed, out = verdict(capsys, ex.check_parameter_count, as_tensor)
    assert not passed and ".item()" in out, out
    assert verdict(capsys, ex.check_parameter_count, lambda c: np.int64(parameter_count(c)))[0]


def test_learning_rate_in_float32_is_named(capsys):
    def float32(step, config):  # the schedule computed with tensors: float32 rounding
        return torch.tensor(learning_rate(step, config), dtype=torch.float32).item()

    passed, out = verdict(capsys, ex.check_learning_rate, float32)
    assert not passed and "right to float32 precision only" in out, out


def test_an_answer_that_cannot_be_printed_is_reported(capsys):
    class Unprintable:
        def __repr__(self):
            raise RuntimeError("no repr")

    passed, out = verdict(capsys, ex.check_merge, lambda ids, pair, new_id: Unprintable())
    assert not passed and "cannot be printed" in out, out


def test_nan_in_a_tensor_answer_is_named(capsys):
    def with_nan(q, k, v, causal):
        out, weights = attention(q, k, v, causal)
        return out * float("nan"), weights

    passed, out = verdict(capsys, ex.check_attention, with_nan)
    assert not passed and "NaN or inf" in out, out


def test_embedding_share_as_a_percentage_is_named(capsys):
    def percent(n_layer, d_model):
        return 100 * embedding_share(n_layer, d_model)

    passed, out = verdict(capsys, ex.check_embedding_share, percent)
    assert not passed and "not a percentage" in out, out


def test_a_tuple_in_the_wrong_order_is_named(capsys):
    def swapped(q, k, v, causal):
        out, weights = attention(q, k, v, causal)
        return weights, out

    passed, out = verdict(capsys, ex.check_attention, swapped)
    assert not passed and "value 0 of the 2 returned: the shape should be (3, 2)" in out, out


def test_a_not_implemented_error_from_torch_is_feedback_not_a_stub(capsys):
    def quantised(rewards):  # torch's C++ raises NotImplementedError for this op on quint8
        q = torch.quantize_per_tensor(rewards, 0.1, 0, torch.quint8)
        return q - q.mean(1, keepdim=True)

    passed, out = verdict(capsys, ex.check_group_advantages, quantised)
    assert not passed and "not attempted" not in out and "not implemented for these inputs" in out
