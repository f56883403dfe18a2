"""The GPT: embeddings, pre-norm transformer blocks, a tied language-model head.

Taught in ``03_transformer.ipynb`` (attention itself is in :mod:`companion.attention`,
taught in ``02_attention.ipynb``). Shape vocabulary: B batch, T time, C channels (``d_model``),
H heads, V vocabulary size.

The model is GPT-2's architecture: token + position embeddings, ``n_layer`` blocks
``x = x + attn(ln1(x)); x = x + mlp(ln2(x))``, a final LayerNorm, and an LM head that shares
its weight with the token embedding. :meth:`GPT.from_hf_gpt2` copies the weights of a
``transformers`` GPT-2 and gives the same logits, so real GPT-2 checkpoints load into it.

Attention maps come from :meth:`GPT.attention_maps`, which walks the blocks with the
from-scratch attention; the forward pass itself always uses PyTorch's fused kernel.

With a :class:`companion.kv_cache.KVCache`, ``model(idx, cache=cache)`` runs only the new tokens
``idx`` after the ``cache.length`` stored ones (``07_inference.ipynb``); without one, nothing
changes.

The options of Llama-style models (``08_real_model.ipynb``, :mod:`companion.llama_layers`) are
fields of :class:`GPTConfig`: ``norm="rmsnorm"``, ``position="rope"``, ``activation="swiglu"``
with ``d_ff``, ``n_kv_head`` for grouped-query attention, ``bias=False``; the defaults are
GPT-2's. SmolLM2-135M is ``GPTConfig(49152, 8192, 30, 9, 576, bias=False, activation="swiglu",
d_ff=1536, n_kv_head=3, norm="rmsnorm", position="rope", rope_base=100000.0)``
(:mod:`companion.smollm2` loads it).

Left out: weight decay groups and the optimiser
(the training loop builds those), mixed precision, and any download: weights come from you.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention
from companion.kv_cache import KVCache, LayerCache
from companion.llama_layers import RMSNorm, RotaryEmbedding, swiglu

ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "swiglu")
NORMS: tuple[str, ...] = ("layernorm", "rmsnorm")
POSITIONS: tuple[str, ...] = ("learned", "rope")
IGNORE_INDEX = -100  # targets with this value add nothing to the loss (SFT masks prompts so)
LAYER_NORM_EPS = 1e-5  # GPT-2's layer_norm_epsilon, also torch's default


@dataclass
class GPTConfig:
    """The shape of a GPT. GPT-2 small is ``GPTConfig(50257, 1024, 12, 12, 768)``."""

    vocab_size: int  # V: number of token ids the model reads and predicts
    context_length: int  # longest sequence the model accepts (rows of the position embedding)
    n_layer: int  # number of transformer blocks stacked
    n_head: int  # H: attention heads per block; must divide d_model
    d_model: int  # C: width of every token's vector (the residual stream)
    dropout: float = 0.0  # dropout probability during training (embeddings, attention, MLP)
    bias: bool = True  # whether Linear and LayerNorm layers have a bias (GPT-2: True)
    activation: str = "gelu"  # "gelu" (exact), "gelu_tanh" (GPT-2's) or "swiglu" (gated, Llama's)
    d_ff: int | None = None  # feed-forward hidden width; None: 4 · d_model (GPT-2)
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama's: no mean, no bias)
    norm_eps: float = LAYER_NORM_EPS  # added to the variance (mean square) in every norm
    position: str = "learned"  # "learned" (a position table, GPT-2) or "rope" (rotary)
    rope_base: float = 10000.0  # with RoPE: channel pair i turns by position · base^(-2i/D)
    tie_embeddings: bool = True  # the LM head shares the token embedding's (V, C) weight

    def __post_init__(self) -> None:
        _check_gpt_config(self)

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready, for checkpoints)."""
        return asdict(self)


def _check_gpt_config(c: GPTConfig) -> None:
    """A ``ValueError`` that names the field and a fix, for every shape the model cannot take."""
    for name in ("vocab_size", "context_length", "n_layer", "n_head", "d_model"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"GPTConfig.{name}={value!r} must be a positive int")
    if c.d_model % c.n_head != 0:
        raise ValueError(
            f"d_model={c.d_model} is not divisible by n_head={c.n_head}: each head needs "
            f"d_model / n_head channels; pick d_model a multiple of {c.n_head} "
            f"(e.g. {c.n_head * max(1, round(c.d_model / c.n_head))}) or change n_head"
        )
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout={c.dropout} must be in [0, 1); use 0.0 to switch it off")
    if c.activation not in ACTIVATIONS:
        raise ValueError(f"activation={c.activation!r} must be one of {ACTIVATIONS}")
    if c.norm not in NORMS or c.position not in POSITIONS:
        raise ValueError(
            f"norm={c.norm!r} must be one of {NORMS} and position={c.position!r} one of {POSITIONS}"
        )
    if c.d_ff is not None and (not isinstance(c.d_ff, int) or c.d_ff < 1):
        raise ValueError(f"d_ff={c.d_ff!r} must be a positive int, or None for 4 · d_model")
    kv = c.n_head if c.n_kv_head is None else c.n_kv_head
    if not isinstance(kv, int) or kv < 1 or c.n_head % kv != 0:
        raise ValueError(
            f"n_kv_head={c.n_kv_head!r} must divide n_head={c.n_head} (each key/value head serves "
            "an equal group of query heads), or be None for one per query head"
        )
    if c.position == "rope" and (c.d_model // c.n_head) % 2:
        raise ValueError(
            f"RoPE turns channels in pairs, so the head size d_model / n_head = "
            f"{c.d_model // c.n_head} must be even; change d_model or n_head"
        )


def check_token_ids(
    ids: torch.Tensor, vocab_size: int, name: str, *, ignore_index: int | None = None
) -> None:
    """A ``ValueError`` unless every id in ``ids`` (any shape) is in ``[0, vocab_size)``.

    ``ignore_index`` (targets only) is allowed too. Read only on the CPU: on a GPU, reading the
    answer back would make every forward pass wait for the device (a host/device sync), so there
    an id out of range fails in the embedding, less helpfully. ``train`` checks its token streams
    once, before the first step.

    >>> check_token_ids(torch.tensor([[3, 12]]), 10, "idx")
    Traceback (most recent call last):
    ValueError: idx holds token id 12 at index (0, 1), outside the vocabulary [0, 10); encode with the tokenizer the model was built for
    """
    if ids.device.type != "cpu":
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} holds token id {int(ids[where])} at index {where}, outside the vocabulary "
            f"[0, {vocab_size}); encode with the tokenizer the model was built for"
        )


def stored_transposed(weight: torch.Tensor) -> torch.Tensor:
    """The same (out, in) matrix, stored column by column: strides (1, out), as (in, out) in
    memory (see :meth:`GPT.store_weights_transposed`).

    >>> stored_transposed(torch.zeros(3, 2)).stride()
    (1, 3)
    """
    return weight.t().contiguous().t()


class MLP(nn.Module):
    """The feed-forward layer, applied to each token alone: C → F, GELU, F → C (F = 4C for GPT-2).

    With ``activation="swiglu"``, ``fc`` makes two F-wide halves, a gate and a value ("up"),
    stacked like the attention's queries, keys and values: ``proj(silu(gate) * up)``.
    (B, T, C) → (B, T, C).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.d_model
        F_ = 4 * C if config.d_ff is None else config.d_ff  # hidden width
        self.gated = config.activation == "swiglu"
        self.fc = nn.Linear(C, 2 * F_ if self.gated else F_, bias=config.bias)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.proj = nn.Linear(F_, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, C) @ (C, 2F) -> 2 × (B, T, F)
            h = swiglu(gate, up)  # (B, T, F)
        else:
            h = F.gelu(self.fc(x), approximate=self.approximate)  # (B, T, C) @ (C, F) -> (B, T, F)
        return self.dropout(self.proj(h))  # (B, T, F) @ (F, C) -> (B, T, C)


def make_norm(config: GPTConfig) -> nn.Module:
    """The normalisation the config asks for: GPT-2's LayerNorm or Llama's RMSNorm, width C."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: GPTConfig, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        C = config.d_model
        self.ln1 = make_norm(config)
        self.attn = MultiHeadAttention(
            C, config.n_head, bias=config.bias, dropout=config.dropout,
            n_kv_head=config.n_kv_head, rotary=rotary,
        )  # fmt: skip
        self.ln2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, T, C) → (B, T, C); ``cache``: this block's keys and values of earlier positions."""
        x = x + self.attn(self.ln1(x), cache)  # (B, T, C): attention writes into the stream
        x = x + self.mlp(self.ln2(x))  # (B, T, C): so does the feed-forward layer
        return x


class GPT(nn.Module):
    """A GPT language model: token ids (B, T) → next-token logits (B, T, V).

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = GPT(GPTConfig(vocab_size=11, context_length=8, n_layer=2, n_head=2, d_model=16))
    >>> logits, loss = model(torch.tensor([[1, 2, 3]]), targets=torch.tensor([[2, 3, 4]]))
    >>> tuple(logits.shape), loss.shape
    ((1, 3, 11), torch.Size([]))
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # token embedding (V, C)
        self.wpe, rotary = None, None
        if config.position == "learned":
            self.wpe = nn.Embedding(config.context_length, config.d_model)  # positions (T_max, C)
        else:  # one table of RoPE angles, shared by every layer's attention
            D = config.d_model // config.n_head
            rotary = RotaryEmbedding(D, config.context_length, base=config.rope_base)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, rotary) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # tied: one (V, C) matrix reads and writes
        self._init_weights()
        self.store_weights_transposed()

    def _init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02) everywhere, residual projections N(0, 0.02 / √(2·n_layer))."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    def store_weights_transposed(self) -> None:
        """Keep each block's linear weights (out, in) in shape and value, but stored in memory
        column by column, as (in, out): the layout of GPT-2's own code and Hugging Face's Conv1D.

        Generating a token multiplies one vector (1, in) by every weight, and common CPU BLAS
        libraries run that product about a quarter faster from this layout (measured by
        ``benchmarks/bench_generate.py``). Only the strides change: ``load_state_dict`` copies
        into these tensors and keeps them; checkpoints are written contiguous. Called by
        ``__init__``; weights assigned later (``load_state_dict(assign=True)``) should pass
        through :func:`stored_transposed` first.
        """
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = stored_transposed(module.weight.data)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T) → ``(logits (B, T, V), loss or None)``.

        ``loss`` is the mean cross-entropy of ``targets`` (B, T) under the logits, skipping
        positions whose target is ``IGNORE_INDEX`` (-100); it is ``None`` without targets.
        With a ``cache``, ``idx`` holds only the new tokens, at positions ``cache.length`` …
        ``cache.length + T - 1``; their keys and values are added to the cache.
        """
        self._check_input(idx, targets, cache)
        logits = self.lm_head(self.hidden_states(idx, cache))  # (B, T, C) @ (C, V) -> (B, T, V)
        if targets is None:
            return logits, None
        V = self.config.vocab_size
        loss = F.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )  # (B·T, V) vs (B·T,) -> scalar
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final LayerNorm's output (B, T, C): what the LM head (or a value head) reads."""
        start = 0 if cache is None else cache.length  # position of idx's first token
        x = self.drop(self.embed(idx, start))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token + position embedding (B, T, C), before dropout: the start of the residual stream.

        The tokens sit at positions ``start`` … ``start + T - 1`` (``start`` > 0 after a cache).
        With RoPE there is no position table: positions enter in attention instead.
        """
        if self.wpe is None:
            return self.wte(idx)  # (B, T, C)
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)  # (T,)
        return self.wte(idx) + self.wpe(pos)  # (B, T, C) + (T, C) -> (B, T, C)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Every layer's attention weights, (n_layer, B, H, T, T), for plotting.

        Walks the blocks as :meth:`Block.forward` does, with the from-scratch attention, which
        returns its weights. Row t of map [l, b, h] says how much token t attends to each
        earlier token in layer l, head h.
        """
        self._check_input(idx)
        x, maps = self.embed(idx), []  # (B, T, C)
        for block in self.blocks:
            a, weights = block.attn.forward_with_weights(block.ln1(x))  # (B, T, C), (B, H, T, T)
            x = x + a
            x = x + block.mlp(block.ln2(x))
            maps.append(weights)
        return torch.stack(maps)  # n_layer × (B, H, T, T) -> (n_layer, B, H, T, T)

    def _check_input(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> None:
        """A clear ``ValueError`` for ids the model cannot read, checked once per call."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
            got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx)
            raise ValueError(
                f"idx must be a (B, T) tensor of int64 token ids, got {got}; "
                "use torch.tensor([ids]) for one sequence"
            )
        length, limit = idx.shape[1], self.config.context_length
        if length == 0:
            raise ValueError("idx has no tokens (T=0); give the model at least one token")
        if length > limit:
            raise ValueError(
                f"sequence length T={length} is longer than context_length={limit}; the model has no "
                f"position embedding beyond that. Keep the last {limit} tokens: idx[:, -{limit}:]"
            )
        check_token_ids(idx, self.config.vocab_size, "idx")
        if cache is not None and cache.length + length > cache.max_length:
            raise ValueError(
                f"the cache holds {cache.length} positions and has room for {cache.max_length}; "
                f"{length} more do not fit. Start again without the cache on the last "
                f"{limit} tokens (what companion.generation.generate does past the window)"
            )
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(
                    f"targets shape {tuple(targets.shape)} must equal idx shape "
                    f"{tuple(idx.shape)}: one next-token id per position (idx shifted left by one)"
                )
            check_token_ids(targets, self.config.vocab_size, "targets", ignore_index=IGNORE_INDEX)

    @classmethod
    def from_hf_gpt2(cls, hf_model: nn.Module, *, dropout: float = 0.0) -> GPT:
        """A :class:`GPT` with the weights of a ``transformers`` ``GPT2LMHeadModel``.

        Hugging Face's GPT-2 stores its linear layers as ``Conv1D`` with the weight transposed
        (in, out); we transpose back. ``gelu_new`` (GPT-2's tanh GELU) becomes
        ``activation="gelu_tanh"``. Nothing is downloaded: pass a model you already have.
        """
        hf_config = getattr(hf_model, "config", None)
        if getattr(hf_config, "model_type", None) != "gpt2" or not hasattr(hf_model, "lm_head"):
            raise ValueError(
                f"expected a transformers GPT2LMHeadModel, got {type(hf_model).__name__}; "
                "build one with GPT2LMHeadModel(GPT2Config(...)) or from_pretrained"
            )
        activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
        act = hf_config.activation_function
        unsupported = {
            "activation_function": act not in activation,
            "layer_norm_epsilon": hf_config.layer_norm_epsilon != LAYER_NORM_EPS,
            "scale_attn_weights": not hf_config.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": hf_config.scale_attn_by_inverse_layer_idx,
            "n_inner": hf_config.n_inner not in (None, 4 * hf_config.n_embd),
        }
        if any(unsupported.values()):
            names = [name for name, bad in unsupported.items() if bad]
            raise ValueError(
                f"this GPT-2 variant differs from the standard one in {names}; only GPT-2's "
                "defaults (gelu_new, layer_norm_epsilon=1e-5, scaled attention) are supported"
            )
        config = GPTConfig(
            vocab_size=hf_config.vocab_size,
            context_length=hf_config.n_positions,
            n_layer=hf_config.n_layer,
            n_head=hf_config.n_head,
            d_model=hf_config.n_embd,
            dropout=dropout,
            bias=True,
            activation=activation[act],
        )
        sd = hf_model.state_dict()
        if not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
            raise ValueError("the HF model's LM head is not tied to its token embedding")
        conv1d = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # (in, out) weights
        ours = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc"}
        ours |= {"mlp.c_proj": "mlp.proj", "ln_1": "ln1", "ln_2": "ln2"}
        mapped: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            if not key.startswith("transformer.") or key.endswith(".attn.bias"):
                continue  # lm_head is tied; attn.bias (old versions) is a mask buffer
            name = key.removeprefix("transformer.")
            name = "blocks." + name.removeprefix("h.") if name.startswith("h.") else name
            for theirs, mine in ours.items():
                name = name.replace(f".{theirs}.", f".{mine}.")
            transpose = any(f".{c}.weight" in key for c in conv1d)
            mapped[name] = value.t() if transpose else value
        model = cls(config)
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        if [m for m in missing if m != "lm_head.weight"] or unexpected:
            raise ValueError(f"weights did not line up: missing {missing}, unexpected {unexpected}")
        return model.to(next(hf_model.parameters()).device)


def parameter_breakdown(config: GPTConfig) -> dict[str, int]:
    """Where the parameters live, by formula (the tied LM head is counted once, in the embedding).

    >>> parameter_breakdown(GPTConfig(vocab_size=10, context_length=4, n_layer=1, n_head=1,
    ...                               d_model=2))
    {'token embedding (= LM head)': 20, 'position embedding': 8, 'attention': 24, 'feed-forward': 42, 'layer norms': 12}
    """
    V, T, L, C = config.vocab_size, config.context_length, config.n_layer, config.d_model
    b = 1 if config.bias else 0
    kv = (config.n_kv_head or config.n_head) * (C // config.n_head)  # key (= value) width
    F_ = 4 * C if config.d_ff is None else config.d_ff  # feed-forward hidden width
    attention = C * (C + 2 * kv) + b * (C + 2 * kv) + C * C + b * C  # qkv and proj (C, C)
    n_in = 2 * F_ if config.activation == "swiglu" else F_  # SwiGLU: a gate and an up half
    feed_forward = C * n_in + b * n_in + F_ * C + b * C  # fc (C, n_in) and proj (F, C)
    norm = C + b * C if config.norm == "layernorm" else C  # weight (and bias); RMSNorm: weight
    counts = {
        "token embedding (= LM head)": V * C,
        "position embedding": T * C if config.position == "learned" else 0,  # RoPE: none
        "attention": L * attention,
        "feed-forward": L * feed_forward,
        "layer norms": (2 * L + 1) * norm,
    }
    if not config.tie_embeddings:
        counts["LM head"] = V * C
    return counts


def count_parameters(config: GPTConfig) -> int:
    """Number of parameters of ``GPT(config)``, by formula.

    >>> count_parameters(GPTConfig(50257, 1024, 12, 12, 768))  # GPT-2 small
    124439808
    """
    return sum(parameter_breakdown(config).values())
