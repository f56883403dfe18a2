"""Write transformers' logits for SmolLM2 on one prompt, for chapter 9 to compare with its own.

Run: ``python benchmarks/smollm2_reference.py`` (needs ``transformers``, ``accelerate`` and
``gguf``; about 20 s). It writes ``companion/assets/smollm2_transformers_logits.json``: the
prompt's ids and, at every position, the 10 largest logits of Hugging Face ``transformers``
reading the same GGUF file in float32, with their token ids. The notebook cannot afford a second
copy of the model in memory, so it reads these numbers instead;
``tests/test_smollm2.py`` checks that the file still matches what ``transformers`` computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PROMPT = "The capital of France is Paris. The capital of Japan is"
OUT = (
    Path(__file__).resolve().parents[1]
    / "companion"
    / "assets"
    / "smollm2_transformers_logits.json"
)
TOP = 10


def reference(hf_model, ids: list[int]) -> dict:
    """transformers' top logits at every position of ``ids`` (float32, rounded to 6 decimals)."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0]  # (T, V)
    top = logits.topk(TOP, dim=-1)
    return {
        "prompt": PROMPT,
        "ids": ids,
        "top_ids": top.indices.tolist(),
        "top_logits": [[round(v, 6) for v in row] for row in top.values.tolist()],
    }


def main() -> None:
    import transformers
    from transformers import AutoModelForCausalLM

    from companion.smollm2 import load_smollm2, smollm2_path

    path = smollm2_path()
    hf_model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = load_smollm2("cpu")[1].encode(PROMPT)
    result = reference(hf_model, ids) | {"transformers": transformers.__version__}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT} ({len(ids)} positions, top {TOP} logits each)")


if __name__ == "__main__":
    main()
