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

Later chapters build on this module without changing it: the KV cache
(:mod:`companion.kv_cache`, ``07_inference.ipynb``) and the Llama-style model
(:mod:`companion.llama`, ``09_real_model.ipynb``). Left out: weight decay groups and the optimiser
(the training loop builds those), mixed precision, and any download: weights come from you.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention

ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh")
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
    activation: str = "gelu"  # "gelu" (exact) or "gelu_tanh" (GPT-2's tanh approximation)

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


class MLP(nn.Module):
    """The feed-forward layer, applied to each token alone: C → 4C, GELU, 4C → C.
    (B, T, C) → (B, T, C).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.d_model
        self.fc = nn.Linear(C, 4 * C, bias=config.bias)  # (C, 4C)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.proj = nn.Linear(4 * C, C, bias=config.bias)  # (4C, C)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc(x), approximate=self.approximate)  # (B, T, C) @ (C, 4C) -> (B, T, 4C)
        return self.dropout(self.proj(h))  # (B, T, 4C) @ (4C, C) -> (B, T, C)


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.d_model
        self.ln1 = nn.LayerNorm(C, eps=LAYER_NORM_EPS, bias=config.bias)
        self.attn = MultiHeadAttention(C, config.n_head, bias=config.bias, dropout=config.dropout)
        self.ln2 = nn.LayerNorm(C, eps=LAYER_NORM_EPS, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) → (B, T, C)."""
        x = x + self.attn(self.ln1(x))  # (B, T, C): attention writes into the stream
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
        self.wpe = nn.Embedding(config.context_length, config.d_model)  # positions (T_max, C)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=LAYER_NORM_EPS, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one (V, C) matrix reads and writes
        self._init_weights()

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

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T) → ``(logits (B, T, V), loss or None)``.

        ``loss`` is the mean cross-entropy of ``targets`` (B, T) under the logits, skipping
        positions whose target is ``IGNORE_INDEX`` (-100); it is ``None`` without targets.
        """
        self._check_input(idx, targets)
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, C) @ (C, V) -> (B, T, V)
        if targets is None:
            return logits, None
        V = self.config.vocab_size
        loss = F.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )  # (B·T, V) vs (B·T,) -> scalar
        return logits, loss

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm's output (B, T, C): what the LM head (or a value head) reads."""
        x = self.drop(self.embed(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token + position embedding (B, T, C), before dropout: the start of the residual stream.

        The tokens sit at positions ``start`` … ``start + T - 1`` (0 … T - 1 unless the tokens
        before them were already run, as with chapter 7's cache).
        """
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)  # (T,)
        return self.wte(idx) + self.wpe(pos)  # (B, T, C) + (T, C) -> (B, T, C)

    def decoder(self, batch_size: int, max_length: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The step function :func:`companion.generation.generate` runs at each new token.

        It maps every id so far (B, T) to the next token's logits (B, V), reading the last
        ``context_length`` ids (the window). ``generate`` checks its input once, so the step
        skips :meth:`forward`'s checks. ``batch_size`` and ``max_length`` (the longest sequence
        it will see) are unused here; a model that keeps state between steps (chapter 7's
        cache) sizes it with them.
        """
        L = self.config.context_length

        def next_logits(idx: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.hidden_states(idx[:, -L:])[:, -1])  # (B, C) @ (C, V) -> (B, V)

        return next_logits

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

    def _check_input(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> None:
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
    attention = C * 3 * C + b * 3 * C + C * C + b * C  # qkv (C, 3C) and proj (C, C)
    feed_forward = C * 4 * C + b * 4 * C + 4 * C * C + b * C  # fc (C, 4C) and proj (4C, C)
    norm = C + b * C  # LayerNorm: a weight (and a bias) per channel
    return {
        "token embedding (= LM head)": V * C,
        "position embedding": T * C,
        "attention": L * attention,
        "feed-forward": L * feed_forward,
        "layer norms": (2 * L + 1) * norm,
    }


def count_parameters(config: GPTConfig) -> int:
    """Number of parameters of ``GPT(config)``, by formula.

    >>> count_parameters(GPTConfig(50257, 1024, 12, 12, 768))  # GPT-2 small
    124439808
    """
    return sum(parameter_breakdown(config).values())
