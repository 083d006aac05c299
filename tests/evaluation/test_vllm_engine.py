"""The vLLM generation engine on a machine without vLLM or a GPU: clear errors, and the parts that
need neither (prompt token ids, pad-mode features, response decoding) against the HF generator."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mcmdpo.evaluation.benchmarks import Item
from mcmdpo.evaluation.generate import BatchGenerator, GenerationConfig
from mcmdpo.evaluation.vllm_engine import (
    PadEncoder,
    VllmGenerator,
    VllmRequests,
    VllmUnavailable,
    decode_response,
    vllm_unavailable_reason,
)
from mcmdpo.method.model import build_tiny_llava, encode_images, load_llava, preprocess_image

QUESTION = "Given an image and context, generate alt-text for the image.\nContext:\n{}"
no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_llava(tmp_path_factory.mktemp("tiny"), [QUESTION, "a red sign", "stars"])
    model, processor = load_llava(folder, mode="pad")
    return folder, model.eval(), processor


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("items")
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(120, 80), (64, 200), (300, 300)]):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(Item(i, QUESTION.format("Our new sign!" + " #" * i), path))
    return out


@no_vllm
def test_missing_vllm_is_one_clear_error(tiny):
    folder, _, _ = tiny
    assert "vLLM is not installed" in vllm_unavailable_reason()
    with pytest.raises(VllmUnavailable, match=r"eval engine 'vllm': vLLM is not installed \(pip install"):
        VllmGenerator(folder, GenerationConfig())


@no_vllm
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_vllm_without_a_gpu_is_one_clear_error(tiny, tmp_path, monkeypatch):
    stub = tmp_path / "site" / "vllm"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")  # an installed (empty) vllm package
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    folder, _, _ = tiny
    with pytest.raises(VllmUnavailable, match="vLLM needs a CUDA GPU, and none is visible"):
        VllmGenerator(folder, GenerationConfig())


def test_beam_search_is_refused_before_anything_loads(tiny):
    folder, _, _ = tiny
    with pytest.raises(ValueError, match="num_beams must be 1"):
        VllmGenerator(folder, GenerationConfig(num_beams=3))


@pytest.mark.parametrize("mode", ["pad", "anyres"])
def test_requests_carry_the_hf_prompt_with_one_image_placeholder(tiny, items, mode):
    folder, model, processor = tiny
    config = GenerationConfig(image_mode=mode, dtype="float32")
    hf = BatchGenerator(model, processor, config)
    encoder = PadEncoder(folder, "float32", device="cpu") if mode == "pad" else None
    requests = VllmRequests(processor, config, encoder)
    hf_ids, _, _ = hf._inputs(items)  # what the HF engine feeds generate (image placeholders expanded)
    image_id = processor.image_token_id
    for item, expanded in zip(items, hf_ids, strict=True):
        request = requests.request(item)
        ids = request["prompt_token_ids"]
        assert ids.count(image_id) == 1 and requests.prompt(item) == hf.prompt(item)
        at = ids.index(image_id)
        n = expanded.count(image_id)
        assert expanded == ids[:at] + [image_id] * n + ids[at + 1 :]
        image = request["multi_modal_data"]["image"]
        if mode == "anyres":
            assert isinstance(image, Image.Image) and image.mode == "RGB"
        else:  # the features HF computes for this image, one row per placeholder
            prep = preprocess_image(processor, image_of(item), "pad")
            with torch.no_grad():
                (expected,) = encode_images(model, [prep["pixel_values"]], [prep["image_size"]], "pad")
            assert image.shape == (1, n, model.config.text_config.hidden_size)
            torch.testing.assert_close(image[0], expected, rtol=0, atol=0)


def image_of(item: Item) -> Image.Image:
    return Image.open(item.image).convert("RGB")


def test_pad_encoder_drops_the_language_model(tiny):
    folder, _, _ = tiny
    encoder = PadEncoder(folder, "float32", device="cpu")
    assert encoder.model.lm_head.weight.device.type == "meta"
    assert all(p.device.type == "meta" for p in encoder.model.model.language_model.parameters())


def test_responses_are_decoded_as_the_hf_generator_decodes_them(tiny):
    _, model, processor = tiny
    tok = processor.tokenizer
    hf = BatchGenerator(model, processor, GenerationConfig())
    words = tok(" a red sign above stars", add_special_tokens=False)["input_ids"]
    for row in (words, [*words, tok.eos_token_id, *words], [*words, tok.pad_token_id, tok.pad_token_id], []):
        assert decode_response(tok, row) == hf._decode(row)
    assert decode_response(tok, [*words, tok.eos_token_id]) == (tok.decode(words).strip(), len(words))
