"""Hostile inputs: what a learner might pass to the functions the notebooks call, and what the
package does with it. Each case asserts the exception's type and a phrase of its message, and
that nothing on disk or in the model changed (issue 30)."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.chat import SMOLLM2_CHAT, as_messages, fit_to_context, message_lengths, render_chat
from companion.checkpoints import META_FILE, load_checkpoint, save_checkpoint
from companion.data import load_course_tokenizer
from companion.dpo import DPOConfig, train_dpo
from companion.environment import make_generator
from companion.generation import generate, next_token_probs, sample_next
from companion.kv_cache import LayerCache
from companion.model import GPT, GPTConfig
from companion.ppo import PPOConfig, train_ppo
from companion.preferences import Preference, Prompt, Sample, make_prompts
from companion.pretraining import init_model
from companion.quantization import dequantize, dequantize_q4_1, quantize_q4_1
from companion.reward_model import RewardConfig, RewardModel
from companion.sft import SFTConfig
from companion.smollm2 import (
    model_from_state,
    read_gguf,
    smollm2_config,
    smollm2_state_dict,
    smollm2_tokenizer,
)
from companion.tokenizer import BPETokenizer
from companion.train_config import check_loss
from companion.world import build_world

TINY = GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, d_model=8)


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), to show nothing changed."""
    return {
        os.path.relpath(os.path.join(root, name), folder): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, names in os.walk(folder)
        for name in names
    }


# --- checkpoints: only a checkpoint is ever replaced -----------------------------------------


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        ("a project folder", r"my_project already exists and is not a checkpoint folder"),
        ("a checkpoint with notes", r"ckpt already exists and holds \['notes.txt'\]"),
        ("a file", r"model.bin already exists and is not a checkpoint folder"),
        ("a foreign .previous", r"\.ckpt\.previous already exists"),
    ],
)
def test_save_checkpoint_never_deletes_what_it_did_not_write(tmp_path, prepare, message):
    model = init_model(TINY, seed=0)
    if prepare == "a project folder":
        target = tmp_path / "my_project"
        (target / "data").mkdir(parents=True)
        (target / "notes.txt").write_text("a week of work")
        (target / "data" / "corpus.txt").write_text("text")
    elif prepare == "a checkpoint with notes":
        target = save_checkpoint(tmp_path / "ckpt", model, step=1)
        (target / "notes.txt").write_text("why this run matters")
    elif prepare == "a file":
        target = tmp_path / "model.bin"
        target.write_bytes(b"weights from elsewhere")
    else:
        target = tmp_path / "ckpt"
        (tmp_path / ".ckpt.previous").mkdir()
        (tmp_path / ".ckpt.previous" / "mine.txt").write_text("not a checkpoint")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        save_checkpoint(target, init_model(TINY, seed=1), step=2)
    assert _snapshot(tmp_path) == before  # nothing written, nothing deleted


def test_save_checkpoint_still_replaces_a_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", init_model(TINY, seed=0), step=1)
    (path / "optimizer.safetensors").write_bytes(b"")  # a damaged earlier save is replaced too
    save_checkpoint(path, init_model(TINY, seed=1), step=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and load_checkpoint(path).step == 2
    assert (path / META_FILE).is_file()


# --- sampling: every temperature > 0 gives a valid id ------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1e-4, 1e-8, 1e-30, 1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_in_every_dtype(dtype, temperature):
    logits = torch.tensor([[1.0, 3.0, 2.0, -5.0], [32768.0, -49152.0, 0.0, 49152.0]], dtype=dtype)
    probs = next_token_probs(logits, temperature=temperature)
    assert torch.equal(probs, next_token_probs(logits, temperature=0).float())  # one-hot
    ids = sample_next(logits, temperature=temperature, generator=make_generator(0))
    assert torch.equal(ids, logits.argmax(dim=-1, keepdim=True))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_logits_that_overflowed_are_refused_not_sampled(bad):
    logits = torch.tensor([[0.0, bad, 1.0]])
    with pytest.raises(ValueError, match=r"logits hold NaN or \+inf"):
        sample_next(logits, generator=make_generator(0))


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 40)),
    temperature=st.floats(min_value=0, exclude_min=True, allow_infinity=False),
    top_k=st.none() | st.integers(1, 40),
    top_p=st.none() | st.floats(min_value=0, exclude_min=True, max_value=1),
)
def test_any_finite_logits_at_any_temperature_give_a_valid_id(
    data, dtype, shape, temperature, top_k, top_p
):
    finfo = torch.finfo(dtype)
    values = st.floats(min_value=float(finfo.min), max_value=float(finfo.max))
    rows = data.draw(st.lists(values, min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]))
    logits = torch.tensor(rows).reshape(shape).clamp(finfo.min, finfo.max).to(dtype)  # (B, V)
    top_k = None if top_k is None else min(top_k, shape[1])
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    assert probs.isfinite().all() and torch.allclose(probs.sum(-1), torch.ones(shape[0]))
    ids = sample_next(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=make_generator(0)
    )
    assert ids.shape == (shape[0], 1) and bool(((ids >= 0) & (ids < shape[1])).all())


# --- RLHF: recipes refused when built, never a NaN weight ---------------------------------------

COURSE_TOK = load_course_tokenizer()


def _chat_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=COURSE_TOK.vocab_size, context_length=64, n_layer=1, n_head=1,
                       d_model=16)  # fmt: skip
    return GPT(config).eval()


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize(
    ("recipe", "changes", "message"),
    [
        (
            PPOConfig,
            {"kl_coef": float("nan")},
            r"PPOConfig.kl_coef=nan must be a finite number >= 0",
        ),
        (PPOConfig, {"kl_coef": -1.0}, r"kl_coef=-1.0 must be a finite number >= 0"),
        (PPOConfig, {"clip": 0.0}, r"clip=0.0 must be a number in \(0, 1\)"),
        (PPOConfig, {"clip": 1.5}, r"clip=1.5 must be a number in \(0, 1\)"),
        (PPOConfig, {"lam": 1.01}, r"lam=1.01 must be a number in \[0, 1\]"),
        (PPOConfig, {"gamma": -0.1}, r"gamma=-0.1 must be a number in \[0, 1\]"),
        (PPOConfig, {"vf_coef": float("inf")}, r"vf_coef=inf must be a finite number >= 0"),
        (PPOConfig, {"learning_rate": 0.0}, r"learning_rate=0.0 must be a finite number > 0"),
        (PPOConfig, {"minibatch_size": 0}, r"minibatch_size=0 must be an int >= 1"),
        (PPOConfig, {"max_new_tokens": 0}, r"max_new_tokens=0 must be an int >= 1"),
        (PPOConfig, {"epochs": 2.5}, r"epochs=2.5 must be an int >= 1"),
        (DPOConfig, {"beta": 0.0}, r"DPOConfig.beta=0.0 must be a finite number > 0"),
        (DPOConfig, {"nll_weight": float("nan")}, r"nll_weight=nan must be a finite number >= 0"),
        (DPOConfig, {"batch_size": 0}, r"batch_size=0 must be an int >= 1"),
        (DPOConfig, {"steps": True}, r"steps=True must be an int >= 1"),
        (RewardConfig, {"learning_rate": float("nan")}, r"learning_rate=nan must be a finite"),
        (RewardConfig, {"batch_size": -1}, r"RewardConfig.batch_size=-1 must be an int >= 1"),
        (SFTConfig, {"n_train": 0}, r"SFTConfig.n_train=0 must be an int >= 1"),
        (SFTConfig, {"train_on_prompt": "yes"}, r"train_on_prompt='yes' must be True or False"),
    ],
)
def test_a_recipe_is_checked_when_it_is_built(recipe, changes, message):
    with pytest.raises(ValueError, match=message):
        recipe(**changes)


def test_ppo_on_replies_one_token_long_writes_no_nan():
    """One prompt, one token of reply: the whitened advantage of a single token is 0 (it is
    its own mean); the old code divided by the standard deviation of one number (NaN)."""
    chat_model, reward_model = _chat_gpt(0), RewardModel(_chat_gpt(1))
    before = _weights(chat_model)
    prompts = make_prompts(build_world(0), split="train")[:2]
    config = PPOConfig(iterations=2, batch_size=1, minibatch_size=1, epochs=1, max_new_tokens=1)
    policy, log = train_ppo(chat_model, COURSE_TOK, reward_model, prompts, config)
    assert all(value.isfinite().all() for value in policy.state_dict().values())
    assert all(math.isfinite(x) for x in log.value_loss + log.entropy + log.clip_fraction)
    assert all(torch.equal(v, chat_model.state_dict()[k]) for k, v in before.items())


def test_dpo_with_an_empty_chosen_reply_is_refused_before_any_step():
    chat_model = _chat_gpt(0)
    before = _weights(chat_model)
    empty = Preference(Prompt("Hello!", "greeting"), Sample((), "", False), Sample((12,), "b", True),
                 "good_tone", False)  # fmt: skip
    with pytest.raises(ValueError, match=r"pair 0's chosen reply has no tokens"):
        train_dpo(chat_model, COURSE_TOK, [empty], DPOConfig(steps=2, nll_weight=1.0))
    assert all(torch.equal(v, chat_model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.zeros(2, 5, dtype=torch.bool), r"rows \[0, 1\] of reply_mask are all False"),
        (torch.ones(2, 4, dtype=torch.bool), r"reply_mask must be a bool tensor shaped like ids"),
    ],
)
def test_the_reward_model_refuses_a_mask_with_no_reply(mask, message):
    reward_model = RewardModel(_chat_gpt(0))
    with pytest.raises(ValueError, match=message):
        reward_model(torch.ones(2, 5, dtype=torch.long), mask)


def test_a_loss_that_is_not_finite_stops_the_step():
    with pytest.raises(ValueError, match="the DPO loss is nan, so this step would write NaN"):
        check_loss(torch.tensor(float("nan")), "DPO")


# --- the context window: the system message stays, a long paste is refused unencoded -----------

CHATML_TOK = BPETokenizer([], pattern=None, special_tokens={"<|im_start|>": 256, "<|im_end|>": 257})


def test_fit_to_context_keeps_the_system_message_and_drops_the_oldest_turns():
    """SmolLM2's template on a byte-level tokenizer: one token per byte, easy to count."""
    talk = [{"role": "system", "content": "Be brief."}, *as_messages("Hi", "Hello.", "Bye")]
    lengths = message_lengths(talk, CHATML_TOK, template=SMOLLM2_CHAT)
    assert lengths == [1 + 7 + 9 + 2, 1 + 5 + 2 + 2, 1 + 10 + 6 + 2, 1 + 5 + 3 + 2]
    kept = fit_to_context(talk, CHATML_TOK, lengths[0] + lengths[3], template=SMOLLM2_CHAT)
    assert kept == [talk[0], talk[3]]  # the oldest turns went, the instructions stayed
    ids, _ = render_chat(talk[1:], CHATML_TOK, max_tokens=100, template=SMOLLM2_CHAT)
    text = CHATML_TOK.decode(ids.tolist())  # the default system message (78 tokens) and "Bye"
    assert text.startswith("<|im_start|>system\nYou are a helpful") and text.endswith(
        "Bye<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("messages", "max_tokens", "message"),
    [
        (
            [{"role": "system", "content": "Always answer in French. " * 4}, *as_messages("Hi")],
            40,
            r"the system message takes more than the 40 tokens of max_tokens=40",
        ),
        (
            [{"role": "system", "content": "Be brief."}, *as_messages("Hi " * 5)],
            40,
            r"the last message with the system message takes 42 tokens, more than max_tokens=40",
        ),
    ],
)
def test_fit_to_context_refuses_what_cannot_fit(messages, max_tokens, message):
    with pytest.raises(ValueError, match=message):
        fit_to_context(messages, CHATML_TOK, max_tokens, template=SMOLLM2_CHAT)


def test_a_long_paste_is_refused_before_it_is_encoded():
    paste = as_messages("a" * 5_000_000)  # one piece: encoding it would take a minute
    start = time.process_time()
    with pytest.raises(ValueError, match="last message alone takes more than max_tokens=64"):
        fit_to_context(paste, COURSE_TOK, 64)
    assert time.process_time() - start < 2.0


# --- GGUF files: refused before allocating, damaged files named ---------------------------------


def _write_gguf(path, *, context_length=16, skip=(), shapes=None, arch="llama"):
    """A tiny llama-architecture GGUF file (one block, width 8, five tokens), written with the
    ``gguf`` package's own writer; ``skip`` leaves metadata or tensors out."""
    gguf = pytest.importorskip("gguf")
    C, H, Hkv, F = 8, 2, 1, 16
    tokens = ["<|im_start|>", "<|im_end|>", "a", "b", "ab"]
    writer = gguf.GGUFWriter(str(path), arch)
    metadata = {
        "context_length": lambda: writer.add_context_length(context_length),
        "block_count": lambda: writer.add_block_count(1),
        "embedding_length": lambda: writer.add_embedding_length(C),
        "feed_forward_length": lambda: writer.add_feed_forward_length(F),
        "head_count": lambda: writer.add_head_count(H),
        "head_count_kv": lambda: writer.add_head_count_kv(Hkv),
        "rms_eps": lambda: writer.add_layer_norm_rms_eps(1e-5),
        "rope_base": lambda: writer.add_rope_freq_base(10000.0),
        "tokenizer_model": lambda: writer.add_tokenizer_model("gpt2"),
        "tokens": lambda: writer.add_token_list(tokens),
        "token_types": lambda: writer.add_token_types([3, 3, 1, 1, 1]),
        "merges": lambda: writer.add_token_merges(["a b"]),
    }
    for name, add in metadata.items():
        if name not in skip:
            add()
    kv = Hkv * C // H
    sizes = {"token_embd.weight": (len(tokens), C), "output_norm.weight": (C,)}
    block = {"attn_norm": (C,), "attn_q": (C, C), "attn_k": (kv, C), "attn_v": (kv, C),
             "attn_output": (C, C), "ffn_norm": (C,), "ffn_gate": (F, C), "ffn_up": (F, C),
             "ffn_down": (C, F)}  # fmt: skip
    sizes |= {f"blk.0.{name}.weight": shape for name, shape in block.items()}
    sizes |= shapes or {}
    rng = np.random.default_rng(0)
    for name, shape in sizes.items():
        if name not in skip:
            writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _load_gguf(path):
    """Everything load_smollm2 does, from any file."""
    reader = read_gguf(path)
    config = smollm2_config(reader)
    return model_from_state(config, smollm2_state_dict(reader, config)), smollm2_tokenizer(reader)


def test_a_hand_made_gguf_file_loads(tmp_path):
    model, tokenizer = _load_gguf(_write_gguf(tmp_path / "tiny.gguf"))
    assert model.config.context_length == 16 and tokenizer.encode("ab") == [4]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context_length": 10**9}, r"llama.context_length is 1000000000; a model of the course"),
        ({"context_length": 0}, r"llama.context_length is 0; a model of the course has between 1"),
        ({"skip": ("head_count",)}, r"no metadata 'llama.attention.head_count'"),
        ({"skip": ("tokens",)}, r"no metadata 'tokenizer.ggml.tokens'"),
        ({"skip": ("token_types",)}, r"no metadata 'tokenizer.ggml.token_type'"),
        ({"skip": ("blk.0.attn_q.weight",)}, r"no tensor 'blk.0.attn_q.weight'"),
        ({"shapes": {"blk.0.ffn_up.weight": (16, 6)}}, r"'blk.0.ffn_up.weight' is \(16, 6\)"),
        ({"arch": "gpt2"}, r"expected a llama-architecture GGUF file"),
    ],
)
def test_a_gguf_file_asking_for_too_much_or_missing_parts_is_refused(tmp_path, changes, message):
    path = _write_gguf(tmp_path / "model.gguf", **changes)
    with pytest.raises(ValueError, match=message):
        _load_gguf(path)


@pytest.mark.parametrize("keep", [0, 30, 100, 300, 0.5])
def test_a_truncated_or_foreign_gguf_file_names_the_file(tmp_path, keep):
    whole = _write_gguf(tmp_path / "whole.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[: int(keep * len(whole)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match=r"cut.gguf cannot be read as a GGUF file"):
        _load_gguf(path)
    path.write_bytes(b"<html>Not Found</html>\n" * 10)  # a download that went wrong
    with pytest.raises(ValueError, match=r"cut.gguf cannot be read as a GGUF file.*magic"):
        _load_gguf(path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dequantize(np.zeros((2, 34), dtype=np.float32), "Q8_0"), r"raw bytes, a uint8"),
        (lambda: dequantize(np.zeros((2, 33), dtype=np.uint8), "Q8_0"), r"rows of 33 bytes"),
        (lambda: dequantize(np.zeros(40, dtype=np.uint8), "Q4_1"), r"uint8 \(40,\)"),
        (lambda: dequantize_q4_1([1, 2, 3]), r"got list"),
        (
            lambda: dequantize(np.zeros((2, 4), dtype=np.uint8), "F32"),
            r"F32 data must be a float32 array, got uint8",
        ),
        (lambda: quantize_q4_1(torch.zeros(64)), r"2-D float tensor \(rows, in\), got"),
        (lambda: quantize_q4_1(torch.zeros(2, 64, dtype=torch.long)), r"got torch.int64"),
        (lambda: quantize_q4_1(torch.zeros(2, 40)), r"rows of 40 weights do not split"),
    ],
)
def test_quantisation_refuses_data_of_the_wrong_type_or_length(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- raw library errors made clear ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(n_experts=8), r"unknown fields \['n_experts'\] and lacks \[\]"),
        (lambda c: c.pop("d_model"), r"unknown fields \[\] and lacks \['d_model'\]"),
    ],
)
def test_a_checkpoint_whose_config_has_unknown_or_missing_fields_is_named(tmp_path, edit, message):
    target = save_checkpoint(tmp_path / "ckpt", init_model(TINY, seed=0), step=1)
    meta = json.loads((target / META_FILE).read_text())
    edit(meta["model_config"])
    (target / META_FILE).write_text(json.dumps(meta))
    before = _snapshot(target)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(target)
    assert _snapshot(target) == before


@pytest.mark.parametrize(
    ("knobs", "error", "message"),
    [
        ({"generator": 0}, TypeError, "generator must be a torch.Generator or None, got int"),
        ({"stop_tokens": 5}, TypeError, "stop_tokens must be a list of token ids, got int"),
        ({"stop_tokens": "<|end|>"}, TypeError, "stop_tokens must be a list of token ids, got str"),
        ({"stop_tokens": [99]}, ValueError, r"stop_tokens=\[99\] must be token ids between 0"),
    ],
)
def test_generate_names_an_argument_of_the_wrong_type(knobs, error, message):
    model = init_model(TINY, seed=0)
    weights = [p.clone() for p in model.parameters()]
    with pytest.raises(error, match=message):
        generate(model, torch.tensor([[1, 2]]), 3, **knobs)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (torch.zeros(1, 2, 3, 4), "has room for 4: 3 more do not fit"),  # 2 stored + 3 > 4
        (torch.zeros(2, 2, 1, 4), r"must both be \(B=1, H=2, T, D=4\)"),  # another batch size
        (torch.zeros(1, 2, 1, 4, dtype=torch.float64), "the cache holds torch.float32"),
    ],
)
def test_the_kv_cache_refuses_what_does_not_fit_it(k, message):
    cache = LayerCache(batch_size=1, n_head=2, head_size=4, max_length=4)
    cache.append(torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    with pytest.raises(ValueError, match=message):
        cache.append(k, k.clone())
    assert cache.length == 2 and torch.equal(cache.keys[:, :, :2], torch.ones(1, 2, 2, 4))


ROLES = st.sampled_from(["system", "user", "assistant", "tool", "", "<|user|>"])
CONTENT = st.one_of(st.text(max_size=40), st.integers(), st.none())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT}), max_size=5))
def test_any_message_list_renders_or_is_refused_clearly(messages):
    """Whatever list of messages a learner builds, render_chat returns ids and a mask of equal
    length, or raises a ValueError/TypeError that says what is wrong; nothing else."""
    tokenizer = load_course_tokenizer()
    for template in ({}, {"template": SMOLLM2_CHAT}):
        try:
            ids, mask = render_chat(messages, tokenizer, **template)
        except (ValueError, TypeError) as error:
            assert str(error)  # a message, not a bare exception
        else:
            assert ids.dtype == torch.int64 and ids.shape == mask.shape
