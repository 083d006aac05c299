"""Tiny-model factory, loading (one code path), image modes, paradigms and the Vicuna v1 template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaNextForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mcmdpo.method.model import (
    build_tiny_llava,
    encode_images,
    encode_prompt,
    expand_to_square,
    format_prompt,
    image_encoder_outputs,
    load_llava,
    num_image_tokens,
    preprocess_image,
)
from mcmdpo.method.model.tiny import build_processor, build_tokenizer

TEXTS = [
    "Given an image and context, generate alt-text for the image.\nContext:\nA sunny day at the beach.",
    "A brown dog runs along the shore with a red ball.",
    "Two people hike up a snowy mountain trail.",
]
QUESTION = "Given an image and context, generate alt-text for the image.\nContext:\nA sunny day!"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny"), TEXTS)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_llava(tiny_dir, mode="pad")


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_saved_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "llava_next"
    assert config["text_config"]["model_type"] == "llama"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    assert config["projector_hidden_act"] == "gelu"


def test_build_is_deterministic(tiny_dir, tmp_path):
    again = build_tiny_llava(tmp_path / "again", TEXTS)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = build_tiny_llava(tmp_path / "other", TEXTS, seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_tokenizer_specials(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<unk>", "<pad>", "<image>")]
    assert None not in ids and len(set(ids)) == 5
    assert ids[:4] == [tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id]
    assert tok.tokenize("a<image>b")[1] == "<image>"  # never split
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    assert processor.image_token_id == tok.convert_tokens_to_ids("<image>")


def test_auto_class_and_load_llava_same_path(tiny_dir, loaded):
    model, _ = loaded
    auto = AutoModelForImageTextToText.from_pretrained(tiny_dir, attn_implementation="sdpa")
    assert type(auto) is type(model) is LlavaNextForConditionalGeneration
    ours, theirs = model.state_dict(), auto.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.config._attn_implementation == "sdpa"


def test_processor_fields(loaded):
    _, processor = loaded
    ip = processor.image_processor
    assert processor.num_additional_image_tokens == 1
    assert processor.patch_size == 14
    assert processor.vision_feature_select_strategy == "default"
    assert ip.crop_size["height"] == ip.crop_size["width"] == 56
    assert ip.size["shortest_edge"] == 56
    assert list(ip.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert [56, 112] in [list(p) for p in ip.image_grid_pinpoints]


def test_expand_to_square():
    img = Image.new("RGB", (6, 2), (255, 0, 0))
    square = expand_to_square(img, (1, 2, 3))
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (1, 2, 3)
    assert square.getpixel((0, 2)) == (255, 0, 0) and square.getpixel((5, 3)) == (255, 0, 0)
    assert square.getpixel((0, 4)) == (1, 2, 3)
    assert expand_to_square(Image.new("RGB", (3, 3)), (0, 0, 0)).size == (3, 3)


def test_pad_pixels_match_clip_preprocessing(loaded):
    _, processor = loaded
    img = noise_image(0, 90, 40)
    out = preprocess_image(processor, img, "pad")
    assert out["pixel_values"].shape == (1, 3, 56, 56)
    assert out["image_size"] == (56, 56) and out["original_size"] == (40, 90)
    ip = processor.image_processor
    clip = CLIPImageProcessorPil(
        size={"shortest_edge": 56},
        crop_size={"height": 56, "width": 56},
        image_mean=ip.image_mean,
        image_std=ip.image_std,
    )
    mean = tuple(int(x * 255) for x in ip.image_mean)
    expected = clip(images=expand_to_square(img, mean), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["pixel_values"], expected, atol=1e-5, rtol=0)


def test_pad_mode_token_count(loaded):
    model, processor = loaded
    prep = preprocess_image(processor, noise_image(1, 70, 50), "pad")
    n = num_image_tokens(processor, "pad", prep["image_size"])
    assert n == (56 // 14) ** 2
    features = encode_images(model, [prep["pixel_values"]], [prep["image_size"]], "pad")
    assert features[0].shape == (n, model.config.text_config.hidden_size)
    pieces = encode_prompt(processor.tokenizer, QUESTION, "A dog.", n)
    ids = torch.tensor([pieces.input_ids(processor.image_token_id)])
    logits = model(input_ids=ids, mm_encoder_outputs=image_encoder_outputs(features)).logits
    assert logits.shape[:2] == ids.shape
    short = torch.tensor([encode_prompt(processor.tokenizer, QUESTION, "A dog.", n - 1).input_ids(4)])
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=short, mm_encoder_outputs=image_encoder_outputs(features))


def test_pad_mode_576_tokens_at_336():
    processor = build_processor(build_tokenizer(TEXTS, vocab_size=300), image_size=336, patch_size=14)
    prep = preprocess_image(processor, noise_image(2, 500, 300), "pad")
    assert prep["pixel_values"].shape == (1, 3, 336, 336)
    assert num_image_tokens(processor, "pad", prep["image_size"]) == 576


def test_anyres_token_count_matches_model_and_processor(loaded):
    model, processor = loaded
    img = noise_image(3, 80, 50)
    prep = preprocess_image(processor, img, "anyres")
    assert prep["pixel_values"].shape[0] > 1  # base crop + tiles
    n = num_image_tokens(processor, "anyres", prep["image_size"])
    features = encode_images(model, [prep["pixel_values"]], [prep["image_size"]], "anyres")
    assert features[0].shape[0] == n
    native = processor(images=img, text="<image> hi", return_tensors="pt")
    assert int((native["input_ids"] == processor.image_token_id).sum()) == n
    torch.testing.assert_close(native["pixel_values"][0], prep["pixel_values"])
    assert n != num_image_tokens(processor, "pad", prep["image_size"])


def test_unknown_mode(tiny_dir):
    with pytest.raises(ValueError, match="image mode"):
        load_llava(tiny_dir, mode="square")


@pytest.mark.parametrize("train_vision_tower", [False, True])
def test_paradigm_freezing(tiny_dir, train_vision_tower):
    model, _ = load_llava(tiny_dir, train_vision_tower=train_vision_tower)
    for name, param in model.named_parameters():
        expected = train_vision_tower if ".vision_tower." in f".{name}" else True
        assert param.requires_grad == expected, name
    assert any(".vision_tower." in f".{n}" for n, _ in model.named_parameters())
    assert any("multi_modal_projector" in n for n, p in model.named_parameters() if p.requires_grad)


def test_gradient_checkpointing_switch(tiny_dir, loaded):
    model, processor = load_llava(tiny_dir, gradient_checkpointing=True)
    assert model.is_activation_checkpointing
    assert not loaded[0].is_activation_checkpointing
    model.train()
    prep = preprocess_image(processor, noise_image(4, 56, 56), "pad")
    features = encode_images(model, [prep["pixel_values"]], [prep["image_size"]], "pad")
    ids = torch.tensor([encode_prompt(processor.tokenizer, QUESTION, "A dog.", 16).input_ids(4)])
    model(input_ids=ids, mm_encoder_outputs=image_encoder_outputs(features)).logits.sum().backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
    assert all(p.grad is None for p in model.model.vision_tower.parameters())


def test_template_exact_string():
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? "
        "ASSISTANT: A cat.</s>"
    )
    assert format_prompt("What is this?", "A cat.") == expected
    assert format_prompt("What is this?") == expected[: expected.index(" A cat.")]


def test_template_pieces(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    pieces = encode_prompt(tok, QUESTION, "A brown dog.", 3)
    whole = tok(format_prompt(QUESTION, "A brown dog.", "<image>" * 3))["input_ids"]
    assert pieces.input_ids(processor.image_token_id) == whole
    assert pieces.prefix_ids[0] == tok.bos_token_id and pieces.answer_ids[-1] == tok.eos_token_id
    assert tok.decode(pieces.answer_ids) == " A brown dog.</s>"
    assert tok.decode(pieces.context_ids) == f"\n{QUESTION} ASSISTANT:"
    labels = pieces.labels(processor.image_token_id)
    n_answer = len(pieces.answer_ids)
    assert labels[-n_answer:] == list(pieces.answer_ids)
    assert set(labels[:-n_answer]) == {-100} and len(labels) == len(whole)


def test_pad_mode_generate(loaded):
    """Pad-mode features go through ``generate`` too (greedy equals a hand-rolled argmax loop)."""
    model, processor = loaded
    prep = preprocess_image(processor, noise_image(5, 70, 40), "pad")
    n = num_image_tokens(processor, "pad", prep["image_size"])
    ids = torch.tensor(
        [encode_prompt(processor.tokenizer, QUESTION, None, n).input_ids(processor.image_token_id)]
    )
    with torch.no_grad():
        features = encode_images(model, [prep["pixel_values"]], [prep["image_size"]], "pad")
        kwargs = {"mm_encoder_outputs": image_encoder_outputs(features)}
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, **kwargs)
        current = ids
        for _ in range(4):
            logits = model(input_ids=current, **kwargs).logits
            current = torch.cat([current, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == current.tolist()
