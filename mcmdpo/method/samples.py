"""Precomputed shard samples as model inputs: the one path from a sample to its token sequences.

:class:`SampleSource` reads texts and pixel tensors of the precompute shards by global index and
builds what the model consumes: :meth:`SampleSource.preference_tokens` (everything the log-prob
engines need for the eight conditions) and :meth:`SampleSource.sft_pieces` (the chosen conversation).
The reference stage and the training objectives both call it, so the offline reference scores
exactly the sequences the policy scores (same template, same image-size rule, same pixels).

Image sizes handed to the model: the square crop in ``pad`` mode, the original (h, w) in ``anyres``
mode (as :func:`mcmdpo.method.model.preprocess_image` returns them). Pixels are used as stored (float16
shards are widened to float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mcmdpo.method.data.shards import PreferenceShards
from mcmdpo.method.logprobs import PreferenceTokens
from mcmdpo.method.model.images import crop_side, num_image_tokens
from mcmdpo.method.model.template import PromptPieces, encode_answer, encode_prefix, encode_training_context

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from mcmdpo.method.data.sft_shards import SftShardReader, SftShards
    from mcmdpo.method.model.template import ConversationPieces


@dataclass(frozen=True)
class TextTokens:
    """Token ids of one preference sample's texts (everything but the images)."""

    context_w: tuple[int, ...]
    context_l: tuple[int, ...]
    answer_w: tuple[int, ...]
    answer_l: tuple[int, ...]


class SampleSource:
    """Texts, pixel tensors and token sequences of precompute samples by global index."""

    def __init__(self, shards: PreferenceShards, processor: ProcessorMixin, mode: str):
        self.shards, self.processor, self.mode = shards, processor, mode
        self.tokenizer = processor.tokenizer
        self.side = crop_side(processor)
        self.prefix = tuple(encode_prefix(self.tokenizer))
        self._texts: dict[int, TextTokens] = {}

    def __len__(self) -> int:
        return len(self.shards)

    def text(self, index: int, field: str) -> str:
        shard, local = self.shards.locate(int(index))
        return str(self.shards.readers[shard].meta[field][local])

    def sample_id(self, index: int) -> str:
        return self.text(index, "ids")

    def image(self, index: int, side: str) -> tuple[torch.Tensor, tuple[int, int], int]:
        """Pixels ``[P, 3, S, S]`` (float32), the size the model needs, and the placeholder count."""
        shard, local = self.shards.locate(int(index))
        reader = self.shards.readers[shard]
        pixels = torch.from_numpy(np.ascontiguousarray(reader.pixels(side, local))).float()
        size = self._model_size(reader.meta[f"{side}_image_sizes"][local])
        return pixels, size, num_image_tokens(self.processor, self.mode, size)  # type: ignore[arg-type]

    def image_tokens(self, index: int, side: str) -> int:
        shard, local = self.shards.locate(int(index))
        size = self._model_size(self.shards.readers[shard].meta[f"{side}_image_sizes"][local])
        return num_image_tokens(self.processor, self.mode, size)  # type: ignore[arg-type]

    def _model_size(self, stored: np.ndarray) -> tuple[int, int]:
        if self.mode == "pad":
            return (self.side, self.side)
        return (int(stored[0]), int(stored[1]))

    def texts(self, index: int) -> TextTokens:
        """The four texts of a sample, tokenised once and cached (questions stripped, as upstream trains)."""
        index = int(index)
        if index not in self._texts:
            tok = self.tokenizer
            self._texts[index] = TextTokens(
                context_w=tuple(encode_training_context(tok, self.text(index, "question"))),
                context_l=tuple(encode_training_context(tok, self.text(index, "rejected_question"))),
                answer_w=tuple(encode_answer(tok, self.text(index, "chosen"))),
                answer_l=tuple(encode_answer(tok, self.text(index, "rejected"))),
            )
        return self._texts[index]

    def preference_tokens(self, index: int) -> PreferenceTokens:
        """Engine input for the conditions of sample ``index`` (:mod:`mcmdpo.method.logprobs`)."""
        t = self.texts(index)
        pix_w, size_w, n_w = self.image(index, "chosen")
        pix_l, size_l, n_l = self.image(index, "rejected")
        return PreferenceTokens(
            prefix=self.prefix,
            context_w=t.context_w,
            context_l=t.context_l,
            answer_w=t.answer_w,
            answer_l=t.answer_l,
            pixels_w=pix_w,
            pixels_l=pix_l,
            image_size_w=size_w,
            image_size_l=size_l,
            image_tokens_w=n_w,
            image_tokens_l=n_l,
        )

    def longest(self, index: int) -> int:
        """Length of the longest condition sequence of a sample (image placeholders included)."""
        t = self.texts(index)
        image = max(self.image_tokens(index, "chosen"), self.image_tokens(index, "rejected"))
        contexts = max(map(len, (t.context_w, t.context_l)))
        return len(self.prefix) + image + contexts + max(map(len, (t.answer_w, t.answer_l)))

    def sft_pieces(self, index: int) -> PromptPieces:
        """The chosen conversation of a sample (question + chosen alt-text with the chosen image)."""
        t = self.texts(index)
        return PromptPieces(
            prefix_ids=self.prefix,
            num_image_tokens=self.image_tokens(index, "chosen"),
            context_ids=t.context_w,
            answer_ids=t.answer_w,
        )


class ConversationSource:
    """SFT shards (encoded images + conversations) as model inputs, by global index.

    The interface :class:`mcmdpo.method.train.objectives.SftObjective` reads (``sft_pieces``, ``image``,
    ``sample_id``, ``mode``), like :class:`SampleSource`; images are decoded and preprocessed on every
    read, with the precompute stage's preprocessing (:class:`mcmdpo.method.data.images.ImagePreprocessor`),
    so the work runs where the sample is loaded: in the DataLoader workers of the trainer.
    """

    def __init__(self, shards: SftShards, processor: ProcessorMixin, mode: str, max_pixels: int = 89_478_485):
        from mcmdpo.method.data.images import ImagePreprocessor

        self.shards, self.processor, self.mode, self.max_pixels = shards, processor, mode, max_pixels
        self.tokenizer = processor.tokenizer
        self.side = crop_side(processor)
        self.preprocess = ImagePreprocessor(processor.image_processor, mode)  # type: ignore[arg-type]
        self._pieces: dict[int, ConversationPieces] = {}

    def __len__(self) -> int:
        return len(self.shards)

    def _reader(self, index: int) -> tuple[SftShardReader, int]:
        shard, local = self.shards.locate(int(index))
        return self.shards.readers[shard], local

    def sample_id(self, index: int) -> str:
        reader, local = self._reader(index)
        return str(reader.meta["ids"][local])

    def _model_size(self, index: int) -> tuple[int, int]:
        if self.mode == "pad":
            return (self.side, self.side)
        reader, local = self._reader(index)
        return tuple(int(x) for x in reader.meta["image_sizes"][local])  # type: ignore[return-value]

    def image_tokens(self, index: int) -> int:
        return num_image_tokens(self.processor, self.mode, self._model_size(index))  # type: ignore[arg-type]

    def image(self, index: int, side: str = "chosen") -> tuple[torch.Tensor, tuple[int, int], int]:
        """Decode + preprocess the sample's image: pixels ``[P, 3, S, S]`` float32, size, placeholders."""
        from mcmdpo.method.data.images import load_image

        reader, local = self._reader(index)
        image, _ = load_image(reader.image(local), self.max_pixels)
        pixels = torch.from_numpy(self.preprocess(image).values)
        return pixels, self._model_size(index), self.image_tokens(index)

    def sft_pieces(self, index: int) -> ConversationPieces:
        """The conversation's token pieces (every answer supervised), tokenised once and cached."""
        from mcmdpo.method.model.template import encode_conversation

        index = int(index)
        if index not in self._pieces:
            reader, local = self._reader(index)
            self._pieces[index] = encode_conversation(
                self.tokenizer, reader.turns(local), self.image_tokens(index)
            )
        return self._pieces[index]
