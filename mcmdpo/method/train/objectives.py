"""What one micro-batch costs: the SFT loss and the preference losses.

An objective has two halves, so that data work overlaps compute (see ``batches.Prefetcher``):

- ``load(indices)``: CPU only, no RNG: read the samples from the precompute shards, tokenise
  (cached per sample), collate. Runs on the prefetch thread.
- ``loss(model, batch)``: forward on the training model; returns a :class:`MicroResult` whose loss
  the trainer back-propagates and whose per-sample metric sums it averages over the global batch.

SFT uses (question, chosen alt-text) with the chosen image m_w: the Vicuna v1 conversation, loss
on the answer tokens only (EOS included), token mean per micro-batch (as the HF Trainer does).

Preference training scores the conditions its loss needs (``PreferenceLoss.conditions``) with the
shared (default) or naive log-prob engine, takes the reference log-probs from the ``reference``
stage's ``logprobs.h5`` (offline) or from a frozen copy of the initial policy (online), and applies
:class:`mcmdpo.method.losses.PreferenceLoss`. Token sequences come from
:meth:`mcmdpo.method.samples.SampleSource.preference_tokens`, the same path the reference stage uses, so
the policy and the offline reference agree before the first update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mcmdpo.method.losses import CHOSEN, PreferenceLoss
from mcmdpo.method.model.images import encode_images, image_encoder_outputs
from mcmdpo.method.samples import SampleSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mcmdpo.method.data.reference_logprobs import ReferenceLogprobs
    from mcmdpo.method.logprobs import PreferenceTokens
    from mcmdpo.method.samples import ConversationSource

IGNORE_INDEX = -100


@dataclass
class MicroResult:
    """Loss of one micro-batch (scalar, for backward) and what the metrics log needs."""

    loss: torch.Tensor
    sums: dict[str, float]
    samples: int
    tokens: int


# ---------------------------------------------------------------------------------------------- SFT


@dataclass
class SftBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor
    pixels: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    tokens: int
    truncated: int


@dataclass
class SftItem:
    ids: list[int]
    labels: list[int]
    pixels: torch.Tensor
    size: tuple[int, int]
    truncated: bool


class SftObjective:
    """Answer-only next-token loss on (question, chosen) with the chosen image."""

    metric_names: tuple[str, ...] = ("answer_tokens", "truncated")

    def __init__(
        self,
        source: SampleSource | ConversationSource,
        max_length: int,
        pad_id: int,
        image_token_id: int,
        workers: int = 0,
    ):
        self.source, self.max_length = source, max_length
        self.pad_id, self.image_token_id = pad_id, image_token_id
        self.workers = workers
        """DataLoader worker processes that run :meth:`item` (0: the trainer's prefetch thread)."""

    def prepare(self, indices: Sequence[int]) -> None:
        """Nothing up front: samples are tokenised on first use and right-truncated to max_length."""

    def row(self, index: int) -> tuple[list[int], list[int]]:
        """Input ids and answer-only labels, right-truncated to ``max_length``."""
        pieces = self.source.sft_pieces(index)
        ids, labels = pieces.input_ids(self.image_token_id), pieces.labels(self.image_token_id)
        prompt = pieces.prompt_length
        if prompt >= self.max_length:
            raise ValueError(
                f"sample {self.source.sample_id(index)}: the prompt alone is {prompt} tokens "
                f"(image placeholders included) >= sft.max_length {self.max_length}; raise max_length"
            )
        return ids[: self.max_length], labels[: self.max_length]

    def item(self, index: int) -> SftItem:
        """One sample, ready to collate: ids, labels, image (decoded here when the source stores bytes)."""
        ids, labels = self.row(int(index))
        pixels, size, _ = self.source.image(int(index), "chosen")
        full = len(self.source.sft_pieces(int(index)).input_ids(self.image_token_id))
        return SftItem(ids, labels, pixels, size, full > self.max_length)

    def collate(self, items: Sequence[SftItem]) -> SftBatch:
        """Right-pad a micro-batch of items."""
        width = max(len(it.ids) for it in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for b, it in enumerate(items):
            input_ids[b, : len(it.ids)] = torch.tensor(it.ids)
            labels[b, : len(it.labels)] = torch.tensor(it.labels)
            mask[b, : len(it.ids)] = 1
        return SftBatch(
            input_ids=input_ids,
            attention_mask=None if bool(mask.all()) else mask,
            labels=labels,
            pixels=[it.pixels for it in items],
            sizes=[it.size for it in items],
            tokens=int(mask.sum()),
            truncated=sum(it.truncated for it in items),
        )

    def load(self, indices: Sequence[int]) -> SftBatch:
        return self.collate([self.item(int(i)) for i in indices])

    def loss(self, model: PreTrainedModel, batch: SftBatch) -> MicroResult:
        device = model.device
        features = encode_images(model, batch.pixels, batch.sizes, self.source.mode)  # type: ignore[arg-type]
        hidden = model.model(
            input_ids=batch.input_ids.to(device),
            attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
            mm_encoder_outputs=image_encoder_outputs(features),
            use_cache=False,
        ).last_hidden_state
        targets = batch.labels[:, 1:]
        rows, cols = torch.nonzero(targets != IGNORE_INDEX, as_tuple=True)
        logits = model.get_output_embeddings()(hidden[rows.to(device), cols.to(device)])
        loss = F.cross_entropy(logits.float(), targets[rows, cols].to(device))
        sums = {"answer_tokens": float(len(rows)), "truncated": float(batch.truncated)}
        return MicroResult(loss, sums, batch.input_ids.shape[0], batch.tokens)


# ----------------------------------------------------------------------------------------- preference


@dataclass
class PreferenceBatch:
    indices: np.ndarray
    tokens: list[PreferenceTokens]
    reference: dict[str, torch.Tensor] | None
    sequence_tokens: int


class OfflineReference:
    """Reference log-probs looked up by global sample index (``ReferenceLogprobs``)."""

    online = False

    def __init__(self, table: ReferenceLogprobs, conditions: Sequence[str]):
        self.table, self.conditions = table, tuple(conditions)

    def lookup(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        values = self.table.lookup(indices)
        return {c: values[c] for c in self.conditions}


class OnlineReference:
    """A frozen copy of the initial policy, scoring each micro-batch under ``no_grad``."""

    online = True

    def __init__(self, model: PreTrainedModel, engine: str, mode: str, conditions: Sequence[str]):
        self.model, self.engine, self.mode, self.conditions = model, engine, mode, tuple(conditions)

    def score(self, tokens: Sequence[PreferenceTokens]) -> dict[str, torch.Tensor]:
        from mcmdpo.method.logprobs import sequence_logprobs

        with torch.no_grad():
            out = sequence_logprobs(
                self.model,
                tokens,
                engine=self.engine,
                mode=self.mode,
                conditions=self.conditions,  # type: ignore[arg-type]
            )
        return {c: v.detach() for c, v in out.items()}


class PreferenceObjective:
    """DPO / mDPO / MCM-DPO on the precomputed preference samples."""

    def __init__(
        self,
        source: SampleSource,
        loss: PreferenceLoss,
        reference: OfflineReference | OnlineReference,
        engine: str,
        max_length: int,
    ):
        self.source, self.reference, self.engine, self.max_length = source, reference, engine, max_length
        self.loss_fn = loss
        self.conditions = loss.conditions
        self.metric_names = loss.metric_names

    def prepare(self, indices: Sequence[int]) -> None:
        self.check_lengths(indices)

    def check_lengths(self, indices: Sequence[int]) -> None:
        """Tokenise every training sample once; refuse sequences longer than ``max_length``.

        No truncation: the offline reference log-probs are sums over the full answers.
        """
        longest = self.source.longest
        too_long = [(int(i), n) for i in indices if (n := longest(int(i))) > self.max_length]
        if too_long:
            worst = max(too_long, key=lambda x: x[1])
            raise ValueError(
                f"{len(too_long)} preference samples are longer than preference.max_length "
                f"{self.max_length} (longest: sample {self.source.sample_id(worst[0])}, {worst[1]} tokens); "
                "raise max_length"
            )

    def sequence_tokens(self, sample: PreferenceTokens) -> int:
        """Tokens of the sample's condition sequences as the naive engine lays them out."""
        total = 0
        for name in self.conditions:
            m, c, y = name.split("_")
            _, _, n_img = sample.image(m[1])
            total += len(sample.prefix) + n_img + len(sample.context(c[1])) + len(sample.answer(y[1]))
        return total

    def load(self, indices: Sequence[int]) -> PreferenceBatch:
        tokens = [self.source.preference_tokens(int(i)) for i in indices]
        index_array = np.asarray(indices, dtype=np.int64)
        reference = None if self.reference.online else self.reference.lookup(index_array)
        return PreferenceBatch(index_array, tokens, reference, sum(map(self.sequence_tokens, tokens)))

    def loss(self, model: PreTrainedModel, batch: PreferenceBatch) -> MicroResult:
        from mcmdpo.method.logprobs import sequence_logprobs

        policy = sequence_logprobs(
            model,
            batch.tokens,
            engine=self.engine,
            mode=self.source.mode,
            conditions=self.conditions,  # type: ignore[arg-type]
        )
        reference = batch.reference if batch.reference is not None else self.reference.score(batch.tokens)
        device = policy[CHOSEN].device
        result = self.loss_fn(policy, {c: v.to(device) for c, v in reference.items()})
        sums = {k: float(v.detach().double().sum()) for k, v in result.metrics.items()}
        return MicroResult(result.loss.mean(), sums, len(batch.tokens), batch.sequence_tokens)
