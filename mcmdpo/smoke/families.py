"""Tiny random-weight vision-language models of several transformers families, saved like hub checkpoints.

Each builder writes an HF folder (``config.json``, weights, tokenizer, processor and, where the real
checkpoints ship one, a chat template) that ``AutoModelForImageTextToText`` + ``AutoProcessor`` load
exactly as they load the real model: the zero-shot baselines' stage tests and ``--smoke`` use them in
place of multi-GB downloads. Widths 32, one or two layers, images of 16-56 px.

Families (:data:`FAMILIES`): ``llava_next`` (LLaVA-1.6 layout, Vicuna chat template), ``vipllava``,
``instructblip`` (Q-Former; no chat template, as on the hub), ``chameleon`` (VQ image tokens; no chat
template), ``qwen2_vl`` and ``qwen2_5_vl`` (dynamic resolution, ChatML template) and ``idefics3``
(image splitting tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

HIDDEN = 32
CORPUS = (
    "Given an image and context, generate alt-text for the image.\nContext:\n",
    "Here are examples of alt-text written for other images:\n",
    "A photo of a red bus parked next to a green tree on a sunny street.",
    "Two people walk a brown dog along the beach at sunset.",
    "USER: ASSISTANT: ###Human: ###Assistant: User: Assistant: system user assistant",
)
VICUNA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""The shape of ``llava-hf/llava-v1.6-vicuna-*-hf``'s template: ``USER: <image>\\n{text} ASSISTANT:``."""
VIP_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '###Human: ' }}"
    "{% else %}{{ '###Assistant: ' }}{% endif %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '###Assistant:' }}{% endif %}"
)
"""VIP-LLaVA's prompt format (``###Human: <image>\\n{text}###Assistant:``)."""
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen2-VL's ChatML template (system message left out)."""
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""Idefics3's ``User:<image>{text}<end_of_utterance>\\nAssistant:``."""


def build_family(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Build, seed and save the tiny model of ``family`` in ``out_dir``; returns ``out_dir``."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r} (known: {', '.join(FAMILIES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = FAMILIES[family]()
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def _tokenizer(specials: tuple[str, ...], bos: str = "<s>", eos: str = "</s>", **extra: Any) -> Any:
    """A byte-level BPE trained on :data:`CORPUS` with ``specials`` (pad, bos, eos, unk first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    base = ("<unk>", bos, eos, "<pad>")
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[*base, *specials],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(list(CORPUS), trainer=trainer)
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        **extra,
    )


def _llama(tokenizer: Any, **overrides: Any) -> Any:
    from transformers import LlamaConfig

    values = dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**{**values, **overrides})


def _clip(image_size: int, patch_size: int = 8) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=HIDDEN,
    )


def _clip_processor(size: int) -> Any:
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    kwargs = dict(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    return _image_processor("CLIPImageProcessor")(**kwargs)


def _image_processor(name: str) -> type:
    """The torchvision-backed class where torchvision exists, else its PIL twin (no fallback warning)."""
    import transformers
    from transformers.utils import is_torchvision_available

    return getattr(transformers, name if is_torchvision_available() else f"{name}Pil")


# ---------------------------------------------------------------- the families


def llava_next() -> tuple[Any, Any]:
    """LLaVA-NeXT (anyres tiles of 32 px, CLS dropped, Vicuna template), like llava-v1.6-*-hf."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    size, patch = 32, 8
    tok = _tokenizer(("<image>",))
    grid = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    config = LlavaNextConfig(
        vision_config=_clip(size, patch),
        text_config=_llama(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(size // patch) ** 2,
        tie_word_embeddings=False,
    )
    images = _image_processor("LlavaNextImageProcessor")(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=grid
    )
    processor = LlavaNextProcessor(
        images,
        tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VICUNA_TEMPLATE,
    )
    return LlavaNextForConditionalGeneration(config), processor


def vipllava() -> tuple[Any, Any]:
    """VIP-LLaVA: features of several CLIP layers concatenated, ``###Human:`` template."""
    from transformers import LlavaProcessor, VipLlavaConfig, VipLlavaForConditionalGeneration

    size, patch = 32, 8
    tok = _tokenizer(("<image>",))
    config = VipLlavaConfig(
        vision_config=_clip(size, patch),
        text_config=_llama(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layers=[-2, -1],
        image_seq_length=(size // patch) ** 2,
    )
    processor = LlavaProcessor(
        _clip_processor(size),
        tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VIP_TEMPLATE,
    )
    return VipLlavaForConditionalGeneration(config), processor


def instructblip() -> tuple[Any, Any]:
    """InstructBLIP: ViT + Q-Former (its own tokenizer) + Llama; the processor prepends the queries."""
    from transformers import (
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )

    size, queries = 32, 4
    tok, qformer_tok = _tokenizer(("<image>",)), _tokenizer(())
    qformer_tok.padding_side = "right"  # BERT-style absolute positions, as bert-base-uncased pads
    vision = InstructBlipVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=size,
        patch_size=8,
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(qformer_tok),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN,
        encoder_hidden_size=HIDDEN,
        pad_token_id=qformer_tok.pad_token_id,
    )
    config = InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=_llama(tok).to_dict(),
        num_query_tokens=queries,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    images = _image_processor("BlipImageProcessor")(size={"height": size, "width": size})
    processor = InstructBlipProcessor(images, tok, qformer_tok, num_query_tokens=queries)
    return InstructBlipForConditionalGeneration(config), processor


def chameleon() -> tuple[Any, Any]:
    """Chameleon: a VQ-VAE turns 16 px images into 16 image-vocabulary tokens; no chat template."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration, ChameleonProcessor

    codes, size = 16, 16
    image_words = tuple(
        "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(k)) + "Z" for k in range(codes)
    )
    tok = _tokenizer(
        ("<image>", "<racm3:break>", "<eoss>", "<reserved08706>", *image_words), sep_token="<reserved08706>"
    )
    vq = dict(
        embed_dim=8,
        num_embeddings=codes,
        latent_channels=8,
        resolution=size,
        base_channels=32,
        channel_multiplier=[1, 1, 1],
        num_res_blocks=1,
        attn_resolutions=[],
    )
    config = ChameleonConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vq_config=vq,
        vocabulary_map=tok.get_vocab(),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    images = _image_processor("ChameleonImageProcessor")(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor = ChameleonProcessor(images, tok, image_seq_length=(size // 4) ** 2)
    return ChameleonForConditionalGeneration(config), processor


QWEN_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _qwen(config_class: type, vision: dict[str, Any]) -> tuple[Any, Any]:
    """A Qwen-VL model of ``config_class`` (M-RoPE text, ``vision`` tower) and its image-only processor."""
    from mcmdpo.evaluation.baselines.hf import images_only

    tok = _tokenizer(QWEN_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>")
    ids = {name: tok.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    rope = {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}
    text = dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        rope_parameters=rope,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = config_class(
        text_config=text,
        vision_config={"depth": 1, "hidden_size": HIDDEN, "num_heads": 2, "patch_size": 8, **vision},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    images = _image_processor("Qwen2VLImageProcessor")(
        patch_size=8,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48},
    )
    # the video processor needs torchvision; image prompts never use it (see baselines.hf.images_only)
    processor = images_only(_processor_class(config_class))(images, tok, None, chat_template=CHATML_TEMPLATE)
    return _model_class(config_class)(config), processor


def _processor_class(config_class: type) -> type:
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return getattr(transformers, PROCESSOR_MAPPING_NAMES[config_class.model_type])


def _model_class(config_class: type) -> type:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[config_class.model_type])


def qwen2_vl() -> tuple[Any, Any]:
    """Qwen2-VL: dynamic resolution (8 px patches, 2x2 merge), M-RoPE, ChatML template."""
    from transformers import Qwen2VLConfig

    return _qwen(Qwen2VLConfig, {"embed_dim": HIDDEN, "spatial_merge_size": 2, "temporal_patch_size": 2})


def qwen2_5_vl() -> tuple[Any, Any]:
    """Qwen2.5-VL: Qwen2-VL's interface with a windowed-attention tower (one full-attention block)."""
    from transformers import Qwen2_5_VLConfig

    vision = {"intermediate_size": 2 * HIDDEN, "out_hidden_size": HIDDEN, "window_size": 16,
              "fullatt_block_indexes": [0], "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
    return _qwen(Qwen2_5_VLConfig, vision)


def idefics3() -> tuple[Any, Any]:
    """Idefics3 (SmolVLM's family): SigLIP-style tower, pixel shuffle, ``<fake_token_around_image>``."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    size, patch, scale = 32, 8, 2
    rows = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
    specials = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *rows)
    tok = _tokenizer(specials, bos="<|begin_of_text|>", eos="<end_of_utterance>")
    vision = dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=_llama(tok).to_dict(),
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    images = _image_processor("Idefics3ImageProcessor")(
        size={"longest_edge": 2 * size}, max_image_size={"longest_edge": size}, do_image_splitting=True
    )
    seq = (size // patch) ** 2 // scale**2
    processor = Idefics3Processor(images, tok, image_seq_len=seq, chat_template=IDEFICS3_TEMPLATE)
    return Idefics3ForConditionalGeneration(config), processor


FAMILIES: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava_next": llava_next,
    "vipllava": vipllava,
    "instructblip": instructblip,
    "chameleon": chameleon,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "idefics3": idefics3,
}
"""Family name (the ``model_type`` of the config) -> builder of (random model, processor)."""
