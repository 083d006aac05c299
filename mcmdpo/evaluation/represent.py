"""Representations for the paper's Fig. 7: final-token hidden states of alt-texts (or prompts).

The paper (Sec. 6.4) "randomly sampled 100 PAlt test examples, encoded both generated and
ground-truth alt-text using LLaVA (Vicuna's final token embedding), and applied PCA". Two readings:

- ``generated`` (default, the paper's words): one encoder, the base model's language model (LLaVA's
  Vicuna), reads each model's *generated* alt-text (the eval task's prediction for the item) and the
  ground-truth alt-text as plain text (BOS + text, no image, no conversation template); a text's
  representation is the last layer's hidden state at its final token. Every model's points and the
  ground truth then live in one space, so "closer to the ground truth" means the same thing for every
  model, and the ground truth is one set of points.
- ``prompt``: each model's own language model reads the item's generation prompt (image + context,
  the eval template, up to ``ASSISTANT:``): the final-token hidden state from which it starts to
  write its alt-text. The ground truth is read by the same model as plain text, as above, so each
  model has its own ground-truth points; distances compare a model's state with its own reading of
  the reference.

Hidden states are ``output_hidden_states[-1]`` (after the final norm), at the last non-pad token of
left-padded batches with position ids counted from the first real token, so batching does not change
a vector. The item sample is seeded (:func:`sample_ids`) and the same for every model of a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmdpo.batch.artifacts import atomic_path, write_json_atomic
from mcmdpo.evaluation.metrics.predictions import id_key

if TYPE_CHECKING:
    from mcmdpo.evaluation.benchmarks.registry import Item

EMBEDDINGS, REPRESENT = "embeddings.npz", "represent.json"
"""A represent task's outputs: ``ids``, ``model`` [N, H], ``reference`` [N, H]; its facts as JSON."""


@dataclass(frozen=True)
class Embedded:
    """One model's points and the ground truth's, row i = item ``ids[i]``."""

    ids: list[Any]
    model: np.ndarray
    reference: np.ndarray
    texts: list[str]


def sample_ids(ids: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` of ``ids`` drawn without replacement by a seeded generator, in their original order
    (all of them when there are fewer); the draw depends only on the set of ids, not their order."""
    keys = sorted(id_key(i) for i in ids)
    if n >= len(keys):
        chosen = set(keys)
    else:
        picked = np.random.default_rng(seed).choice(len(keys), size=n, replace=False)
        chosen = {keys[k] for k in picked.tolist()}
    return [i for i in ids if id_key(i) in chosen]


def answer_text(response: str) -> str:
    """A generated alt-text as the paper protocol scores it: a leading ``Assistant:`` stripped."""
    text = response.strip()
    return text.removeprefix("Assistant:").strip()


def _final_states(model: Any, input_ids: Any, attention: Any, **extra: Any) -> np.ndarray:
    """Last-layer hidden state at the last position of left-padded rows, float32 numpy."""
    import torch

    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    output_hidden_states=True, use_cache=False, **extra)  # fmt: skip
    return out.hidden_states[-1][:, -1, :].float().cpu().numpy()


def embed_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
    """``[len(texts), H]``: each text (BOS + text) read by ``model``'s language model, final token."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t or " ")["input_ids"] for t in texts[start : start + batch_size]]
        longest = max(len(i) for i in ids)
        input_ids = torch.tensor([[pad] * (longest - len(i)) + i for i in ids], device=model.device)
        attention = torch.tensor([[0] * (longest - len(i)) + [1] * len(i) for i in ids], device=model.device)
        out.append(_final_states(model, input_ids, attention))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_prompts(generator: Any, items: Sequence[Item], batch_size: int = 8) -> np.ndarray:
    """``[len(items), H]``: each item's generation prompt (image + context) read by the generator's
    model (a :class:`~mcmdpo.evaluation.generate.BatchGenerator`), at its final token."""
    from mcmdpo.method.model import encode_images, image_encoder_outputs

    out = []
    for start in range(0, len(items), batch_size):
        batch = generator.prompt_inputs(items[start : start + batch_size])
        features = encode_images(generator.model, batch.pixels, batch.sizes, generator.config.image_mode)
        extra = {"mm_encoder_outputs": image_encoder_outputs(features)}
        out.append(_final_states(generator.model, batch.input_ids, batch.attention, **extra))
    return np.concatenate(out)


def generated_texts(records: Sequence[Mapping[str, Any]], ids: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(generated alt-texts, references) of the prediction records of ``ids``, in that order."""
    by_id = {id_key(r["id"]): r for r in records}
    missing = [i for i in ids if id_key(i) not in by_id]
    if missing:
        raise ValueError(f"no prediction for item(s) {missing[:5]} (eval tasks incomplete?)")
    rows = [by_id[id_key(i)] for i in ids]
    return [answer_text(str(r["response"])) for r in rows], [str(r["chosen"]) for r in rows]


def write_embedded(out_dir: Path, embedded: Embedded, info: Mapping[str, Any]) -> list[str]:
    """``embeddings.npz`` and ``represent.json`` (``info`` + counts and the item ids), atomically."""
    with atomic_path(Path(out_dir) / EMBEDDINGS) as tmp, open(tmp, "wb") as f:
        np.savez(f, model=embedded.model.astype(np.float32), reference=embedded.reference.astype(np.float32))
    doc = {**info, "n": len(embedded.ids), "hidden_size": int(embedded.model.shape[1]),
           "ids": list(embedded.ids), "texts": embedded.texts, "embeddings": EMBEDDINGS}  # fmt: skip
    write_json_atomic(Path(out_dir) / REPRESENT, doc)
    return [EMBEDDINGS, REPRESENT]


def read_embedded(folder: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(``represent.json``, model points, reference points) of a finished represent task."""
    import json

    doc = json.loads((Path(folder) / REPRESENT).read_text())
    with np.load(Path(folder) / doc.get("embeddings", EMBEDDINGS)) as arrays:
        return doc, arrays["model"], arrays["reference"]


def represent_generated(
    encoder_dir: Path, records: Sequence[Mapping[str, Any]], n: int, seed: int, config: Any
) -> Embedded:
    """Mode ``generated``: ``n`` sampled items' generated and reference alt-texts, both read by the
    base model's language model (``encoder_dir``); ``config``: a generation config (dtype, image mode)."""
    from mcmdpo.method.model.load import load_frozen

    ids = sample_ids([r["id"] for r in records], n, seed)
    generated, references = generated_texts(records, ids)
    model, processor = load_frozen(encoder_dir, config.image_mode, config.dtype)
    batch = config.batch_size
    points = embed_texts(model, processor.tokenizer, generated, batch)
    return Embedded(ids, points, embed_texts(model, processor.tokenizer, references, batch), generated)


def represent_prompts(model_dir: Path, items: Sequence[Item], n: int, seed: int, config: Any) -> Embedded:
    """Mode ``prompt``: ``n`` sampled items' prompts (image + context) and reference alt-texts, read by
    the evaluated model itself (``model_dir``)."""
    from mcmdpo.evaluation.generate import load_generator

    ids = sample_ids([i.id for i in items], n, seed)
    chosen = {id_key(i): item for item in items for i in [item.id]}
    picked = [chosen[id_key(i)] for i in ids]
    generator = load_generator(model_dir, config)
    points = embed_prompts(generator, picked, config.batch_size)
    references = [str(item.fields.get("chosen", "")) for item in picked]
    tokenizer = generator.tokenizer
    return Embedded(ids, points, embed_texts(generator.model, tokenizer, references, config.batch_size), [])
