"""Sequence log-probs of the eight MCM-DPO conditions: a naive and a shared engine.

Both return ``{condition: float64 Tensor[B]}``: per sample, the sum of ``log p(answer token | ancestors)``
over the answer tokens only (EOS included, prompt and image excluded), accumulated in float64.

``naive_logprobs`` is what the upstream code does: one full sequence per condition
(``prefix, image, context, answer``), each with its own vision pass, right-padded into one batch.

``shared_logprobs`` encodes each distinct image once (vision tower + projector; the features are
reused by every condition that shows the image, so gradients into a trained tower accumulate through
autograd) and packs the conditions of a sample as a prefix tree into ONE row::

    prefix -+- image m_w -+- context c_w -+- answer y_w
            |             |               +- answer y_l
            |             +- context c_l -+- ...
            +- image m_l -+- ...

A 4-D boolean attention mask (True = attend; sdpa) lets every token see exactly its ancestors, and
explicit position ids restart each branch where its parent ends, so every token sees the same
keys at the same positions as in its naive sequence. The LM head runs only on the positions that
predict answer tokens. Rows are right-padded; pad tokens attend only to themselves. On CUDA the same
mask runs as FlexAttention with a block-sparse ``BlockMask`` (``attention="auto"``; see
:mod:`mcmdpo.method.attention`), SDPA with the boolean mask elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from mcmdpo.method.attention import (
    TreeAttention,
    TreeRow,
    enable_tree_attention,
    resolve_attention,
    tree_block_mask,
)
from mcmdpo.method.losses import CONDITIONS
from mcmdpo.method.model.images import ImageMode, encode_images, image_encoder_outputs, num_image_tokens
from mcmdpo.method.model.images import preprocess_image as _preprocess_image
from mcmdpo.method.model.template import encode_answer, encode_prefix, encode_training_context

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

Engine = Literal["naive", "shared"]
IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class PreferenceTokens:
    """One tokenised preference sample: everything both engines need to score the 8 conditions.

    ``pixels_*`` are ``[P, 3, S, S]`` (``P == 1`` in pad mode), ``image_size_*`` the (h, w) the model
    needs (anyres unpadding), ``image_tokens_*`` the number of ``<image>`` placeholders. Answers end
    with EOS.
    """

    prefix: tuple[int, ...]
    context_w: tuple[int, ...]
    context_l: tuple[int, ...]
    answer_w: tuple[int, ...]
    answer_l: tuple[int, ...]
    pixels_w: torch.Tensor
    pixels_l: torch.Tensor
    image_size_w: tuple[int, int]
    image_size_l: tuple[int, int]
    image_tokens_w: int
    image_tokens_l: int

    def image(self, which: str) -> tuple[torch.Tensor, tuple[int, int], int]:
        """Pixels, image size and placeholder count of image ``"w"`` or ``"l"``."""
        if which == "w":
            return self.pixels_w, self.image_size_w, self.image_tokens_w
        return self.pixels_l, self.image_size_l, self.image_tokens_l

    def context(self, which: str) -> tuple[int, ...]:
        """Context ids ``"w"`` or ``"l"``."""
        return self.context_w if which == "w" else self.context_l

    def answer(self, which: str) -> tuple[int, ...]:
        """Answer ids ``"w"`` (chosen) or ``"l"`` (rejected)."""
        return self.answer_w if which == "w" else self.answer_l


def build_preference_tokens(
    processor: ProcessorMixin,
    *,
    question_w: str,
    question_l: str,
    chosen: str,
    rejected: str,
    image_w: Image.Image | Mapping[str, Any],
    image_l: Image.Image | Mapping[str, Any],
    mode: ImageMode = "pad",
) -> PreferenceTokens:
    """Tokenise one sample with the training template (Vicuna v1, questions stripped as upstream).

    Images are PIL images or the dicts of :func:`mcmdpo.method.model.images.preprocess_image` (e.g. a
    noised rejected image from the precompute stage).
    """
    tok = processor.tokenizer
    img_w, img_l = (_as_pixels(processor, im, mode) for im in (image_w, image_l))
    return PreferenceTokens(
        prefix=tuple(encode_prefix(tok)),
        context_w=tuple(encode_training_context(tok, question_w)),
        context_l=tuple(encode_training_context(tok, question_l)),
        answer_w=tuple(encode_answer(tok, chosen)),
        answer_l=tuple(encode_answer(tok, rejected)),
        pixels_w=img_w["pixel_values"],
        pixels_l=img_l["pixel_values"],
        image_size_w=tuple(img_w["image_size"]),
        image_size_l=tuple(img_l["image_size"]),
        image_tokens_w=num_image_tokens(processor, mode, img_w["image_size"]),
        image_tokens_l=num_image_tokens(processor, mode, img_l["image_size"]),
    )


def _as_pixels(
    processor: ProcessorMixin, image: Image.Image | Mapping[str, Any], mode: ImageMode
) -> Mapping[str, Any]:
    return _preprocess_image(processor, image, mode) if isinstance(image, Image.Image) else image


def parse_condition(name: str) -> tuple[str, str, str]:
    """``"ml_cw_yl"`` -> ``("l", "w", "l")`` (image, context, answer)."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; valid: {', '.join(CONDITIONS)}")
    m, c, y = name.split("_")
    return m[1], c[1], y[1]


def sequence_logprobs(
    model: PreTrainedModel,
    batch: Sequence[PreferenceTokens],
    *,
    engine: Engine = "shared",
    mode: ImageMode = "pad",
    conditions: Sequence[str] = CONDITIONS,
    attention: TreeAttention = "auto",
) -> dict[str, torch.Tensor]:
    """Dispatch to :func:`naive_logprobs` or :func:`shared_logprobs` (``attention``: shared only)."""
    if engine == "naive":
        return naive_logprobs(model, batch, mode=mode, conditions=conditions)
    if engine == "shared":
        return shared_logprobs(model, batch, mode=mode, conditions=conditions, attention=attention)
    raise ValueError(f"engine must be 'naive' or 'shared' (got {engine!r})")


# ----------------------------------------------------------------------------------------------- naive


def naive_logprobs(
    model: PreTrainedModel,
    batch: Sequence[PreferenceTokens],
    *,
    mode: ImageMode = "pad",
    conditions: Sequence[str] = CONDITIONS,
) -> dict[str, torch.Tensor]:
    """One full sequence and one vision pass per (sample, condition), as upstream does."""
    image_id = model.config.image_token_id
    ids, labels, pixels, sizes = [], [], [], []
    for sample in batch:
        for name in conditions:
            m, c, y = parse_condition(name)
            pix, size, n_img = sample.image(m)
            prompt = [*sample.prefix, *[image_id] * n_img, *sample.context(c)]
            ids.append([*prompt, *sample.answer(y)])
            labels.append([IGNORE_INDEX] * len(prompt) + list(sample.answer(y)))
            pixels.append(pix)
            sizes.append(size)
    features = encode_images(model, pixels, sizes, mode)
    input_ids, attention_mask, label_ids = _right_pad(ids, labels, _pad_id(model))
    unpadded = bool(attention_mask.all())  # then plain causal attention, no mask tensor needed
    logits = model(
        input_ids=input_ids.to(model.device),
        attention_mask=None if unpadded else attention_mask.to(model.device),
        mm_encoder_outputs=image_encoder_outputs(features),
        use_cache=False,
    ).logits
    sums = label_logprob_sums(logits, label_ids).view(len(batch), len(conditions))
    return {name: sums[:, k] for k, name in enumerate(conditions)}


def label_logprob_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row float64 sum of ``log p(labels[t] | < t)`` over positions whose label is not ignored."""
    labels = labels[:, 1:].cpu()  # index arithmetic on the host (also lets FLOP counts run on "meta")
    rows, cols = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
    targets = labels[rows, cols].to(logits.device)
    rows, cols = rows.to(logits.device), cols.to(logits.device)
    token = token_logprobs(logits[:, :-1][rows, cols], targets)
    return token.new_zeros(labels.shape[0]).index_add(0, rows, token)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row, in float64.

    float64 because a sequence log-prob is a sum of tens of terms of magnitude ~1-10 whose fp32
    rounding (ulp 1.5e-5 at 200) would exceed the 1e-5 naive/shared agreement, and because the
    losses subtract policy and reference sums of that size.
    """
    logps = torch.log_softmax(logits.double(), dim=-1)
    return logps.gather(-1, targets[:, None]).squeeze(-1)


def _right_pad(
    ids: list[list[int]], labels: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    label_ids = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (row, lab) in enumerate(zip(ids, labels, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(row)] = 1
    return input_ids, mask, label_ids


def _pad_id(model: PreTrainedModel) -> int:
    pad = model.config.text_config.pad_token_id
    return int(pad) if pad is not None else 0


# ---------------------------------------------------------------------------------------------- shared


def build_tree_row(sample: PreferenceTokens, conditions: Sequence[str], image_token_id: int) -> TreeRow:
    """Lay out ``prefix -> images -> contexts -> answers`` for the requested conditions (DFS order)."""
    parsed = [parse_condition(name) for name in conditions]
    row = TreeRow()
    root = row.add_segment(sample.prefix, parent=-1)
    for m in _unique(p[0] for p in parsed):
        pixels, size, n_img = sample.image(m)
        row.images.append((pixels, size))
        img_seg = row.add_segment([image_token_id] * n_img, parent=root)
        for c in _unique(p[1] for p in parsed if p[0] == m):
            ctx_seg = row.add_segment(sample.context(c), parent=img_seg)
            for y in _unique(p[2] for p in parsed if p[:2] == (m, c)):
                _add_answer(row, ctx_seg, sample.answer(y), parsed.index((m, c, y)))
    return row


def _add_answer(row: TreeRow, ctx_seg: int, answer: Sequence[int], cond_index: int) -> None:
    """The first answer token is predicted by the context's last token, the others by the answer."""
    predictor = row.last_index(ctx_seg)
    start = len(row.ids)
    row.add_segment(answer, parent=ctx_seg)
    predictors = [predictor, *range(start, start + len(answer) - 1)]
    row.answers.append((cond_index, predictors, list(answer)))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def tree_attention_mask(rows: Sequence[TreeRow], width: int) -> torch.Tensor:
    """``[B, 1, L, L]`` bool: query i sees key j iff j's segment is an ancestor-or-self of i's
    segment, and j <= i inside the same segment. Pad rows see only themselves (no empty rows)."""
    mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1, 1)
    for b, row in enumerate(rows):
        n = len(row.ids)
        seg = torch.tensor(row.segments)
        visible = row.ancestors()[seg][:, seg]
        same = seg[:, None] == seg[None, :]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        mask[b, 0, :n, :n] = visible & (~same | causal)
    return mask


def shared_logprobs(
    model: PreTrainedModel,
    batch: Sequence[PreferenceTokens],
    *,
    mode: ImageMode = "pad",
    conditions: Sequence[str] = CONDITIONS,
    attention: TreeAttention = "auto",
) -> dict[str, torch.Tensor]:
    """Vision once per distinct image + one prefix-tree row per sample (see the module docstring).

    ``attention``: ``sdpa`` (dense boolean mask), ``flex`` (FlexAttention + BlockMask; forward only
    on CPU) or ``auto`` (flex on CUDA, sdpa elsewhere).
    """
    rows = [build_tree_row(s, conditions, model.config.image_token_id) for s in batch]
    pixels, sizes = zip(*[im for row in rows for im in row.images], strict=True)
    features = encode_images(model, list(pixels), list(sizes), mode)
    kind = resolve_attention(attention, model, model.device)
    if kind == "flex":
        enable_tree_attention(model)
    input_ids, positions, mask = _pack_rows(rows, _pad_id(model), model.device, kind)
    hidden = model.model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        mm_encoder_outputs=image_encoder_outputs(features),
        use_cache=False,
    ).last_hidden_state
    return _answer_sums(model, hidden, rows, conditions)


def _pack_rows(
    rows: Sequence[TreeRow], pad_id: int, device: torch.device, attention: str = "sdpa"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | BlockMask]:
    width = max(len(r.ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row.ids)] = torch.tensor(row.ids)
        positions[b, : len(row.ids)] = torch.tensor(row.positions)
    return input_ids.to(device), positions.to(device), _tree_mask(rows, width, device, attention)


def _tree_mask(
    rows: Sequence[TreeRow], width: int, device: torch.device, attention: str
) -> torch.Tensor | BlockMask:
    """The boolean ``[B, 1, L, L]`` mask (sdpa) or the ``BlockMask`` (flex) of the packed rows."""
    if attention == "flex":
        return tree_block_mask(rows, width, device)
    return tree_attention_mask(rows, width).to(device)


def _answer_sums(
    model: PreTrainedModel, hidden: torch.Tensor, rows: Sequence[TreeRow], conditions: Sequence[str]
) -> dict[str, torch.Tensor]:
    """LM head on the answer-predicting positions only, then per-(sample, condition) sums."""
    width, n_cond = hidden.shape[1], len(conditions)
    flat, targets, owner = [], [], []
    for b, row in enumerate(rows):
        for cond_index, predictors, answer in row.answers:
            flat.extend(b * width + i for i in predictors)
            targets.extend(answer)
            owner.extend([b * n_cond + cond_index] * len(answer))
    device = hidden.device
    selected = hidden.flatten(0, 1)[torch.tensor(flat, device=device)]
    logits = model.get_output_embeddings()(selected)
    token = token_logprobs(logits, torch.tensor(targets, device=device))
    sums = token.new_zeros(len(rows) * n_cond).index_add(0, torch.tensor(owner, device=device), token)
    sums = sums.view(len(rows), n_cond)
    return {name: sums[:, k] for k, name in enumerate(conditions)}
