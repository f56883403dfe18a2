"""Looking inside a trained model: attention heatmaps, a widget, and contextual token vectors.

Taught in ``02_attention.ipynb`` (its preview section): :func:`attention_heads_figure` draws every
head of a layer; :class:`AttentionExplorer` picks sentence, layer and head;
:func:`attention_pattern_shares` measures what each head attends to on average (itself, the
previous token, the first token, elsewhere); :func:`residual_stream` and
:func:`similarity_by_pair_kind` measure how attention gives one word ("bank") different vectors
in different contexts, with the control that keeps the sentence's wording apart from its sense
(:func:`sense_similarity` is the plain within/across comparison).

The widget's logic lives here (state + handlers), so it is tested without a kernel: set
``explorer.layer.value = 1`` and the handler re-draws at once. The notebook only creates and
displays it, next to a static figure made by :func:`attention_heads_figure` (widgets render
blank in the static book).

:func:`time_attention` and :func:`power_law_exponent` measure how attention's cost grows with
the sequence length (the notebook prints the measured exponent beside the operation count).

Left out: attention rollout and other attribution methods; the heatmaps show raw weights.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from companion.attention import scaled_dot_product_attention
from companion.environment import DeviceLike, resolve_device


def plot_attention(ax, weights: torch.Tensor, labels: Sequence[str], *, title: str = "") -> None:
    """Draw one (T, T) attention map on ``ax``: row t = how query token t spreads its attention."""
    T = len(labels)
    if tuple(weights.shape) != (T, T):
        raise ValueError(f"weights shape {tuple(weights.shape)} does not match {T} tokens")
    ax.imshow(weights.detach().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    shown = [repr(t)[1:-1] for t in labels]  # spaces and newlines made visible
    ax.set_xticks(range(T), shown, rotation=90, fontsize=7)
    ax.set_yticks(range(T), shown, fontsize=7)
    ax.set_xlabel("key (attended to)", fontsize=7)
    ax.set_ylabel("query (attending)", fontsize=7)
    ax.set_title(title, fontsize=9)


def attention_heads_figure(maps: torch.Tensor, labels: Sequence[str], *, layer: int = 0):
    """One heatmap per head for a single layer: ``maps`` is (H, T, T). Returns the Figure."""
    import matplotlib.pyplot as plt

    H = maps.shape[0]
    cols = min(H, 4)
    rows = -(-H // cols)  # ceiling division
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h < H:
            plot_attention(ax, maps[h], labels, title=f"layer {layer}, head {h}")
        else:
            ax.axis("off")
    fig.tight_layout()
    return fig


@torch.no_grad()
def residual_stream(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Every token's vector before block 0 and after each block: (n_layer + 1, B, T, C).

    Entry 0 is token + position embedding (the same for a word wherever its context is); entry
    l is the residual stream after block l. ``model.hidden_states`` is the last entry after the
    final LayerNorm.
    """
    x = model.embed(idx)  # (B, T, C)
    states = [x]
    for block in model.blocks:
        x = block(x)  # (B, T, C)
        states.append(x)
    return torch.stack(states)  # (n_layer + 1, B, T, C)


def sense_similarity(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity within group a (N_a, C), within group b, and across the groups.

    Pairs of a vector with itself are left out. Worked example: two tight groups, far apart.

    >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    >>> b = torch.tensor([[0.0, 1.0], [0.1, 1.0]])
    >>> {k: round(v, 3) for k, v in sense_similarity(a, b).items()}
    {'within a': 0.995, 'within b': 0.995, 'across': 0.099}
    """
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need at least 2 vectors per group, got {a.shape[0]} and {b.shape[0]}")
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)  # unit rows: dot = cosine

    def within(g: torch.Tensor) -> float:
        sims = g @ g.T  # (N, N)
        n = g.shape[0]
        return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))

    return {"within a": within(a), "within b": within(b), "across": float((a @ b.T).mean())}


def similarity_by_pair_kind(
    vectors: torch.Tensor, sense: Sequence[str], template: Sequence[str]
) -> dict[str, float]:
    """Mean cosine similarity over pairs of rows of ``vectors`` (N, C), by kind of pair.

    Row i has a ``sense[i]`` and was made from sentence ``template[i]``. Kinds: "same sense,
    same template", "same sense, other template", "other sense"; a row is never paired with
    itself. The second against the third is the sense effect with the wording held apart.

    >>> v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> sims = similarity_by_pair_kind(v, ["a", "a", "a", "b"], ["t", "t", "u", "v"])
    >>> {kind: round(value, 3) for kind, value in sims.items()}  # (0.6 + 0.6) / 2, (0 + 0 + 0.8) / 3
    {'same sense, same template': 1.0, 'same sense, other template': 0.6, 'other sense': 0.267}
    """
    N = vectors.shape[0]
    if not len(sense) == len(template) == N:
        raise ValueError(
            f"need one sense and one template per row: {N} rows, "
            f"{len(sense)} senses, {len(template)} templates"
        )
    unit = F.normalize(vectors.float(), dim=-1)
    sims = unit @ unit.T  # (N, N): cosine of every pair
    groups: dict[str, list[float]] = {
        "same sense, same template": [],
        "same sense, other template": [],
        "other sense": [],
    }
    for i in range(N):
        for j in range(i + 1, N):
            if sense[i] != sense[j]:
                kind = "other sense"
            elif template[i] == template[j]:
                kind = "same sense, same template"
            else:
                kind = "same sense, other template"
            groups[kind].append(float(sims[i, j]))
    if not all(groups.values()):
        empty = [kind for kind, values in groups.items() if not values]
        raise ValueError(f"no pairs of kind {empty}: give two senses and two templates per sense")
    return {kind: sum(values) / len(values) for kind, values in groups.items()}


def attention_pattern_shares(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """How much attention goes to the token itself, the previous token, the first token and
    elsewhere: each a tensor of ``maps.shape[:-2]``, averaged over the queries t ≥ 2.

    ``maps`` is (..., T, T), e.g. (L, B, H, T, T) from ``GPT.attention_maps``. Queries 0 and 1
    are left out because there the first token is also the previous token or the token itself.
    Worked example, one map of three tokens (only query 2 counts):

    >>> maps = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.1, 0.6, 0.3]])
    >>> {k: round(float(v), 3) for k, v in attention_pattern_shares(maps).items()}
    {'self': 0.3, 'previous': 0.6, 'first': 0.1, 'elsewhere': 0.0}
    """
    T = maps.shape[-1]
    if T < 3 or maps.shape[-2] != T:
        raise ValueError(f"maps must be (..., T, T) with T >= 3, got {tuple(maps.shape)}")
    t = torch.arange(2, T, device=maps.device)  # the queries that count
    queries = maps[..., 2:, :]  # (..., T - 2, T)
    shares = {
        "self": queries[..., t - 2, t],  # (..., T - 2): the diagonal
        "previous": queries[..., t - 2, t - 1],  # just below the diagonal
        "first": queries[..., 0],  # the first column
    }
    keys = torch.arange(T, device=maps.device)
    between = (keys >= 1) & (keys[None, :] <= t[:, None] - 2)  # (T - 2, T): keys 1 … t - 2
    shares["elsewhere"] = (queries * between).sum(dim=-1)
    return {name: share.mean(dim=-1) for name, share in shares.items()}


def strongest_links(weights: torch.Tensor, labels: Sequence[str]) -> list[tuple[str, str, float]]:
    """For each query token, the key it attends to most: ``(query, key, weight)``.

    >>> strongest_links(torch.tensor([[1.0, 0.0], [0.3, 0.7]]), ["a", "b"])
    [('a', 'a', 1.0), ('b', 'b', 0.7)]
    """
    best = weights.max(dim=-1)  # values and indices, (T,) each
    return [
        (labels[t], labels[int(s)], round(float(w), 4))
        for t, (w, s) in enumerate(zip(best.values, best.indices, strict=True))
    ]


class AttentionExplorer:
    """Dropdown for the sentence, sliders for layer and head, a heatmap image and a summary.

    ``model`` is a :class:`companion.model.GPT`; ``encode`` turns text into token ids and
    ``token_text`` turns one id back into its text. Display ``explorer.widget``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sentences: Sequence[str],
        encode: Callable[[str], list[int]],
        token_text: Callable[[int], str],
        *,
        device: DeviceLike = None,
    ) -> None:
        import ipywidgets as widgets

        if not sentences:
            raise ValueError("give the explorer at least one sentence to show")
        self.model, self.encode, self.token_text = model, encode, token_text
        self.device = resolve_device(device)
        self._cache: dict[str, tuple[list[str], torch.Tensor]] = {}
        config = model.config
        self.sentence = widgets.Dropdown(options=list(sentences), description="sentence")
        self.layer = widgets.IntSlider(0, min=0, max=config.n_layer - 1, description="layer")
        self.head = widgets.IntSlider(0, min=0, max=config.n_head - 1, description="head")
        self.image = widgets.Image(format="png")
        self.summary = widgets.Label()
        for control in (self.sentence, self.layer, self.head):
            control.observe(self.update, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.sentence, self.layer, self.head]), self.summary, self.image]
        )
        self.update()

    def attention(self, sentence: str) -> tuple[list[str], torch.Tensor]:
        """Tokens of ``sentence`` and the model's attention maps for it, (n_layer, H, T, T)."""
        if sentence not in self._cache:
            ids = self.encode(sentence)
            idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
            maps = self.model.attention_maps(idx)[:, 0].cpu()  # (L, 1, H, T, T) -> (L, H, T, T)
            self._cache[sentence] = ([self.token_text(i) for i in ids], maps)
        return self._cache[sentence]

    def current(self) -> tuple[list[str], torch.Tensor]:
        """Tokens and the (T, T) map the controls point at now."""
        labels, maps = self.attention(self.sentence.value)
        return labels, maps[self.layer.value, self.head.value]  # (T, T)

    def update(self, change: dict | None = None) -> None:
        """Handler for every control: redraw the heatmap and rewrite the summary."""
        from matplotlib.figure import Figure

        labels, weights = self.current()
        fig = Figure(figsize=(4.5, 4.5))
        title = f"layer {self.layer.value}, head {self.head.value}"
        plot_attention(fig.add_subplot(), weights, labels, title=title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        self.image.value = buffer.getvalue()
        query, key, weight = strongest_links(weights, labels)[-1]
        self.summary.value = (
            f"{title}: the last token {query!r} attends most to {key!r} (weight {weight:.2f})"
        )


# --- measuring attention's cost -----------------------------------------------------------


def time_attention(
    lengths: list[int],
    *,
    n_head: int = 4,
    head_size: int = 64,
    attention: str = "fused",
    repeats: int = 3,
    seed: int = 0,
    causal: bool = True,
    device: torch.device | str | None = "cpu",
) -> list[float]:
    """Best-of-``repeats`` seconds for one attention call at each sequence length T.

    Inputs are random (1, H, T, D) queries, keys and values drawn with ``seed``;
    ``attention="manual"`` times the from-scratch function, ``"fused"`` PyTorch's kernel.
    ``causal=False`` times the call without the mask (with it, the fused kernel skips the blocks
    of scores the mask hides entirely, so causal calls do less work). Used by
    ``02_attention.ipynb`` and ``benchmarks/bench_attention.py`` to show cost growing like T².
    Wall-clock times depend on the machine and its load: print them, never assert on them.
    """
    if attention not in ("fused", "manual"):
        raise ValueError(f"attention={attention!r} must be 'fused' or 'manual'")
    generator = torch.Generator().manual_seed(seed)
    seconds = []
    for T in lengths:
        q, k, v = (torch.randn(1, n_head, T, head_size, generator=generator) for _ in range(3))
        q, k, v = q.to(device), k.to(device), v.to(device)  # (1, H, T, D) each
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            if attention == "fused":
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            else:
                scaled_dot_product_attention(q, k, v, causal=causal)
            if q.device.type == "cuda":
                torch.cuda.synchronize(q.device)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds


def power_law_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of the least-squares line through (log x, log y): y ∝ x^slope.

    >>> round(power_law_exponent([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    lx, ly = (
        torch.tensor(xs, dtype=torch.float64).log(),
        torch.tensor(ys, dtype=torch.float64).log(),
    )
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())
