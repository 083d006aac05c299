"""Tiny LLaVA-NeXT factory: in-process tokenizer, tiny CLIP + Llama, saved like a real checkpoint.

The result has the file layout of ``llava-hf/llava-v1.6-vicuna-7b-hf`` (``config.json``,
``model.safetensors``, tokenizer and processor files) and is loaded by :func:`mcmdpo.method.model.load_llava`
through exactly the same code path as the real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import is_torchvision_available

from mcmdpo.method.model.template import IMAGE_TOKEN, SYSTEM, format_prompt

BUILTIN_CORPUS = (
    "Given an image and context, generate alt-text for the image.\nContext:\n",
    "A photo of a red bus parked next to a green tree on a sunny street.",
    "Two people walk a brown dog along the beach at sunset.",
    "A poster with the word SALE in large white letters on a blue background.",
    "Three yellow circles and one black square on a white table.",
    "Happy birthday to my best friend! What a great party tonight.",
)
"""Tokenizer corpus of a tiny model built without a ``data`` stage."""

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
# LLaVA-1.6 anyres grid at 336 is 1x2, 2x1, 2x2, 3x1, 1x3 crops; the tiny model keeps the shapes.
GRID_SHAPES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def build_tiny_llava(
    out_dir: Path,
    texts: Iterable[str],
    *,
    image_size: int = 56,
    patch_size: int = 14,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Build, randomly initialise (seeded) and save a tiny LLaVA-NeXT; deterministic in its inputs.

    ``texts`` train the byte-level BPE tokenizer (the Vicuna template text is always added).
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    config = tiny_config(tokenizer, image_size, patch_size, hidden_size, num_layers, vocab_size)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    build_processor(tokenizer, image_size, patch_size).save_pretrained(out_dir)
    return out_dir


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ``<unk> <s> </s> <pad> <image>``; BOS is added by the post-processor."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [SYSTEM, format_prompt("question", "answer"), *texts]
    backend.train_from_iterator(corpus, trainer=trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=4096,
    )


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int,
    patch_size: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
) -> LlavaNextConfig:
    """Tiny CLIP vision + Llama text config in the LLaVA-1.6 Vicuna layout (layer -2, no CLS, gelu MLP)."""
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )
    text = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=max(vocab_size, len(tokenizer)),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=grid_pinpoints(image_size),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=False,
    )


def grid_pinpoints(image_size: int) -> list[list[int]]:
    """LLaVA-1.6's anyres resolutions scaled to ``image_size``."""
    return [[rows * image_size, cols * image_size] for rows, cols in GRID_SHAPES]


def build_processor(
    tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int
) -> LlavaNextProcessor:
    """A ``LlavaNextProcessor`` with CLIP mean/std, crops of ``image_size`` and a CLS-carrying tower."""
    image_processor = _image_processor_class()(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid_pinpoints(image_size),
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def _image_processor_class() -> type:
    # The torchvision backend is the default where torchvision exists; the PIL one otherwise.
    if is_torchvision_available():
        from transformers import LlavaNextImageProcessor

        return LlavaNextImageProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil
