"""Watching sampling: a next-token distribution reshaped by temperature, top-k and top-p.

Taught in ``07_inference.ipynb`` (sections 2 and 3). :class:`TemperatureExplorer` puts a
temperature slider over a bar chart of the most likely next tokens (drawn as HTML, so it needs no
plotting back end) and names the entropy and the top token's share; its logic lives here (state +
an ``observe`` handler), so pytest drives it by setting ``explorer.slider.value``.
:func:`temperature_figure` and :func:`survivors_figure` are the static pictures for the book,
where widgets render blank. The numbers come from :func:`companion.generation.next_token_probs`,
the function sampling uses.

Left out: animation, and a slider per knob (top-k and top-p are shown as static figures).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import torch

from companion.generation import next_token_probs


def entropy(probs: torch.Tensor) -> float:
    """Entropy in nats of a distribution (V,); 0 when one token has everything.

    >>> round(entropy(torch.tensor([0.5, 0.5, 0.0])), 4)  # ln 2
    0.6931
    """
    p = probs[probs > 0].double()
    return float(-(p * p.log()).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def bars_html(labels: Sequence[str], probs: Sequence[float], *, kept: Sequence[bool] | None = None):
    """Horizontal bars, one per label, as long as its probability (HTML); dropped ones grey.

    >>> bars_html(["·a", "·b"], [0.75, 0.25]).count("<tr>")
    2
    """
    kept = [True] * len(labels) if kept is None else kept
    rows = []
    for label, p, keep in zip(labels, probs, kept, strict=True):
        colour = "#4c72b0" if keep else "#cccccc"
        rows.append(
            f'<tr><td style="font-family:monospace;text-align:right;padding-right:6px">'
            f"{html.escape(label)}</td>"
            f'<td style="width:320px"><div style="background:{colour};height:14px;'
            f'width:{max(p, 0.0) * 100:.1f}%"></div></td><td>{p:.3f}</td></tr>'
        )
    return "<table>" + "".join(rows) + "</table>"


class TemperatureExplorer:
    """A temperature slider over the ``top`` most likely next tokens' probabilities.

    ``logits`` (V,) are one position's next-token logits and ``labels`` the V tokens' texts.
    The bars keep their order (most likely first at temperature 1), so moving the slider shows
    the same tokens gaining or losing probability. ``explorer.probs`` (V,) is the distribution
    at the slider's temperature.
    """

    def __init__(
        self, logits: torch.Tensor, labels: Sequence[str], *, top: int = 10, start: float = 1.0
    ) -> None:
        import ipywidgets as widgets

        if logits.dim() != 1 or len(labels) != logits.shape[0]:
            raise ValueError(
                f"logits must be (V,) with one label per token; got {tuple(logits.shape)} and "
                f"{len(labels)} labels. Use logits[0, -1] and tokenizer.decode([i]) for each id"
            )
        self.logits, self.labels = logits.detach().float().cpu(), list(labels)
        self.order = self.logits.argsort(descending=True, stable=True)[:top].tolist()
        self.probs = torch.empty(0)
        self.slider = widgets.FloatSlider(
            value=start, min=0.0, max=3.0, step=0.05, description="temperature",
            continuous_update=True,
        )  # fmt: skip
        self.view = widgets.HTML()
        self.summary = widgets.Label()
        self.slider.observe(self.update, names="value")
        self.widget = widgets.VBox([self.slider, self.summary, self.view])
        self.update()

    def update(self, change: dict | None = None) -> None:
        """Handler for the slider: recompute the distribution, redraw the bars and the summary."""
        t = self.slider.value
        self.probs = next_token_probs(self.logits[None], temperature=t)[0]  # (V,)
        shown = [self.probs[i].item() for i in self.order]
        self.view.value = bars_html([self.labels[i] for i in self.order], shown)
        self.summary.value = (
            f"temperature {t:.2f}: top token {shown[0]:.1%}, the {len(self.order)} shown "
            f"{sum(shown):.1%}, entropy {entropy(self.probs):.2f} nats "
            f"(uniform: {math.log(len(self.labels)):.2f})"
        )


def temperature_figure(
    logits: torch.Tensor, labels: Sequence[str], temperatures: Sequence[float], *, top: int = 10
):
    """One bar chart per temperature of the ``top`` tokens' probabilities (same tokens, same
    order in every panel). Returns the ``Figure``; ``fig.axes[i].patches`` are panel i's bars."""
    import matplotlib.pyplot as plt

    order = logits.argsort(descending=True, stable=True)[:top].tolist()
    fig, axes = plt.subplots(
        1, len(temperatures), figsize=(4 * len(temperatures), 3.2), sharey=True
    )
    axes = [axes] if len(temperatures) == 1 else list(axes)
    for ax, t in zip(axes, temperatures, strict=True):
        probs = next_token_probs(logits[None].float(), temperature=t)[0]
        ax.barh(range(len(order)), [probs[i].item() for i in order], color="#4c72b0")
        ax.set_yticks(range(len(order)), [labels[i] for i in order], family="monospace")
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"temperature {t:g}: entropy {entropy(probs):.2f} nats")
        ax.set_xlabel("probability")
    fig.tight_layout()
    return fig


def survivors_figure(
    logits: torch.Tensor,
    labels: Sequence[str],
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    top: int = 15,
):
    """The ``top`` most likely tokens at temperature 1, blue if they survive ``top_k``/``top_p``
    and grey if ruled out, with the running total that top-p compares with p. Returns the
    ``Figure``; ``fig.survivors`` lists the surviving token ids among those shown."""
    import matplotlib.pyplot as plt

    full = next_token_probs(logits[None].float())[0]  # (V,)
    after = next_token_probs(logits[None].float(), top_k=top_k, top_p=top_p)[0]  # (V,)
    order = full.argsort(descending=True, stable=True)[:top].tolist()
    alive = [after[i].item() > 0 for i in order]
    fig, ax = plt.subplots(figsize=(7, 0.28 * top + 1.2))
    ax.barh(range(top), [full[i].item() for i in order],
            color=["#4c72b0" if a else "#cccccc" for a in alive])  # fmt: skip
    running = full[order].cumsum(0).tolist()
    ax.plot(running, range(top), color="0.3", marker=".", label="running total")
    if top_p is not None:
        ax.axvline(top_p, color="#c44e52", linestyle="--", label=f"p = {top_p:g}")
    ax.set_yticks(range(top), [labels[i] for i in order], family="monospace")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    knobs = ", ".join(f"{k}={v}" for k, v in (("top_k", top_k), ("top_p", top_p)) if v is not None)
    ax.set_title(f"{knobs or 'no filter'}: {sum(alive)} of the {top} most likely survive")
    ax.set_xlabel("probability at temperature 1")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.survivors = [i for i, a in zip(order, alive, strict=True) if a]
    return fig
