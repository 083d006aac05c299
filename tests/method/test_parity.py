"""Parity with the authors' code (issue 11): every point against the upstream code's own lines.

Each test copies the few upstream lines it needs as the expected value, with their path and line:

- LVUGAI/MCM-DPO at 519439d: ``mcmdpo_inference.py``, ``llava/conversation.py``,
  ``llava/model/builder.py``, ``llava/train/train.py``, ``llava/train/llava_trainer.py``, ``get_score.py``;
- RLHF-V/RLAIF-V: ``eval/eval_gpt_obj_halbench.py``, ``eval/eval_gpt_mmhal.py``;
- luka-group/mDPO: ``bunny/modeling_bunny_phi.py`` (``crop_images``), which calls torchvision's
  ``transforms/v2/_geometry.py`` ``RandomResizedCrop._get_params``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.evaluation.benchmarks import Item
from mcmdpo.evaluation.engines import generator_loader
from mcmdpo.evaluation.generate import GenerationConfig, generation_config, resolve_dtype
from mcmdpo.evaluation.metrics import chair, mmhal
from mcmdpo.evaluation.readiness import check_recipe
from mcmdpo.evaluation.vllm_engine import VllmUnavailable
from mcmdpo.method import noise
from mcmdpo.method.data.records import load_records, rejected_context_position
from mcmdpo.method.data.sft_records import parse_sft_record
from mcmdpo.method.data.shards import PreferenceShards, ShardReader
from mcmdpo.method.data.spec import PrecomputeSpec, resolve_strategy
from mcmdpo.method.losses import CONDITIONS, PreferenceLoss, mcmdpo_loss
from mcmdpo.method.model.template import (
    LLAVA_V1_SYSTEM,
    SYSTEM,
    encode_context,
    encode_training_context,
    format_prompt,
    training_question,
)
from mcmdpo.method.train.batches import DataOrder, conversation_lengths, epoch_generator, sample_lengths
from mcmdpo.method.train.spec import BatchLayout, LossSpec
from mcmdpo.stages.eval import EvalSpec
from tests.helpers.eval import make_context, talt_files
from tests.helpers.precompute import make_dataset, precompute, report_of

CLI = [sys.executable, "-m", "mcmdpo"]
QUESTION = "Given an image and context, generate alt-text for the image.\nContext:\nOur new sign!"


# ---------------------------------------------------------------- 1. inference prompt (llava_v1)


def upstream_inference_prompt(question: str) -> str:
    # llava/conversation.py:325-335: conv_llava_v1
    system = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    roles, sep, sep2 = ("USER", "ASSISTANT"), " ", "</s>"
    # mcmdpo_inference.py:49-54
    qs = "<image>" + "\n" + question + "\n"
    messages = [[roles[0], qs], [roles[1], None]]
    # llava/conversation.py:54-63: get_prompt, SeparatorStyle.TWO
    seps = [sep, sep2]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def test_inference_prompt_is_upstream_llava_v1_and_training_keeps_vicuna_v1():
    config = generation_config(EvalSpec())  # [eval] defaults
    assert config.template == "llava_v1" and GenerationConfig().template == "llava_v1"
    assert format_prompt(QUESTION + config.question_suffix, template=config.template) == (
        upstream_inference_prompt(QUESTION)
    )
    # training: --version v1 (scripts/mcmdpo.sh) -> conv_templates["v1"] = conv_vicuna_v1
    # (llava/conversation.py:242-252, 376)
    assert SYSTEM == (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    assert format_prompt("q", "a") == f"{SYSTEM} USER: <image>\nq ASSISTANT: a</s>"
    assert LLAVA_V1_SYSTEM in upstream_inference_prompt("q")
    vicuna = GenerationConfig(template="vicuna_v1")
    assert vicuna.deviations() == [
        "generation template=vicuna_v1 (upstream mcmdpo_inference.py: llava_v1)",
        "generation dtype=float32 (upstream mcmdpo_inference.py: float16)",
        "generation num_beams=1 (upstream mcmdpo_inference.py: 3)",
    ]
    assert GenerationConfig(dtype="float16", num_beams=3).deviations() == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mcmdpo.method.model import build_tiny_llava, load_llava

    folder = build_tiny_llava(
        tmp_path_factory.mktemp("task") / "model", [QUESTION, LLAVA_V1_SYSTEM, "a red sign"]
    )
    model, processor = load_llava(folder, mode="pad")
    return folder, model.eval(), processor


def test_generator_tokenises_the_llava_v1_prompt(tiny, tmp_path):
    from mcmdpo.evaluation.generate import BatchGenerator

    _, model, processor = tiny
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    item = Item(1, QUESTION, tmp_path / "a.png")
    generator = BatchGenerator(model, processor, GenerationConfig())
    (ids,), _, _ = generator._inputs([item])
    image_id = processor.image_token_id
    first, last = ids.index(image_id), len(ids) - ids[::-1].index(image_id)
    before, after = upstream_inference_prompt(QUESTION).split("<image>")  # tokenizer_image_token's chunks
    tok = processor.tokenizer
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:first]) == before
    assert tok.decode(ids[last:]) == after and generator.prompt(item) == upstream_inference_prompt(QUESTION)


# ---------------------------------------------------------------- 2. generation dtype


def test_auto_dtype_is_upstream_fp16_on_gpu_and_fp32_on_cpu(monkeypatch):
    # llava/model/builder.py:43: kwargs['torch_dtype'] = torch.float16
    # mcmdpo_inference.py:63-67: images_tensor = process_images(...).to(model.device, dtype=torch.float16)
    upstream = str(torch.float16).removeprefix("torch.")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_dtype("auto") == upstream == "float16"
    assert generation_config(EvalSpec(dtype="bfloat16")).dtype == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") == "float32" and resolve_dtype("float16") == "float16"


# ---------------------------------------------------------------- 3. crop window


def upstream_crop_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of upstream's crop of ``image``."""
    # llava/train/train.py:941-946
    height, width = image.size
    resize_height = min(height, 240)
    resize_width = min(width, 320)
    size = (resize_width, resize_height)  # transforms.RandomCrop(size=(resize_width, resize_height))
    return size[1], size[0]  # torchvision sizes are (h, w)


@pytest.mark.parametrize("wh", [(1000, 600), (600, 1000), (200, 150), (300, 200)])
def test_crop_boxes_follow_upstream_and_the_documented_window_is_an_option(wh):
    image = Image.new("RGB", wh)
    rng = np.random.default_rng(0)
    for _ in range(50):
        left, top, right, bottom = noise.crop_box(*wh, rng)
        assert (right - left, bottom - top) == upstream_crop_size(image)
        assert left >= 0 and right <= wh[0] and top >= 0 and bottom <= wh[1]
        left, top, right, bottom = noise.crop_box(*wh, rng, "documented")
        assert (right - left, bottom - top) == (min(320, wh[0]), min(240, wh[1]))
    assert upstream_crop_size(Image.new("RGB", (1000, 600))) == (240, 320)  # at most 240 wide x 320 tall


# ---------------------------------------------------------------- 4. random = the rejected-context record


def upstream_random_idx(i: int, n: int, skip: tuple[int, ...] = ()) -> int:
    """Upstream's draw (train.py:900-904) on the global generator; ``skip``: records we redraw past."""
    state = random.getstate()
    # llava/train/train.py:900-904
    random.seed(i)
    while True:
        random_idx = random.choice(range(n))
        if random_idx != i and random_idx not in skip:
            break
    random.setstate(state)
    return random_idx


def test_rejected_context_is_upstreams_draw_over_many_pairs():
    pairs = [(i, n) for n in range(2, 200) for i in range(n)]
    assert len(pairs) == 19_899
    assert all(rejected_context_position(i, n) == upstream_random_idx(i, n) for i, n in pairs)


def test_random_image_is_the_rejected_context_record_in_the_hdf5(tmp_path, processor_dir):
    n = 7
    bad = upstream_random_idx(0, n)  # sample 0's context record gets an unreadable image
    train, images = make_dataset(tmp_path / "data", n, {bad: {"bytes": b"not an image"}})
    (shard,) = precompute(
        tmp_path / "out", train, images, processor_dir, strategy="random", on_bad_record="skip"
    )
    reader = ShardReader(shard)
    assert len(reader) == n - 1 and reader.attrs["random_source"] == "context"
    for i in range(len(reader)):
        item = reader[i]
        pos = item["positions"]
        expected = upstream_random_idx(pos, n, skip=(bad,))  # every draw of `bad` goes on to the next
        assert item["rejected_image_positions"] == item["rejected_context_positions"] == expected
        other = reader[[j for j in range(len(reader)) if reader[j]["positions"] == expected][0]]
        assert np.array_equal(item["rejected_pixels"], other["chosen_pixels"])
        assert item["rejected_question"] == other["question"]
    independent = ShardReader(
        precompute(
            tmp_path / "ind",
            train,
            images,
            processor_dir,
            strategy="random",
            random_source="independent",
            on_bad_record="skip",
        )[0]  # fmt: skip
    )
    meta = independent.meta
    assert not np.array_equal(meta["rejected_image_positions"], meta["rejected_context_positions"])


# ---------------------------------------------------------------- 5. upstream loss form: fixed norm


def upstream_mcmdpo_loss(policy: dict, ref: dict, r: dict[str, float], norm: float = 2.8, beta: float = 0.1):
    """llava/train/llava_trainer.py:448-473 (use_cross_modal_loss, use_cl_reward_num = 7); condition
    names: policy_cw_mw_yl_logp -> policy["mw_cw_yl"], ...; r1..r7 = para_r1..para_r7."""
    p = {f"{c.split('_')[1]}_{c.split('_')[0]}_{c.split('_')[2]}": v for c, v in policy.items()}
    f = {f"{c.split('_')[1]}_{c.split('_')[0]}_{c.split('_')[2]}": v for c, v in ref.items()}
    pi_logratios = r["r3"] / norm * (p["cw_mw_yw"] - p["cw_mw_yl"])
    ref_logratios = r["r3"] / norm * (f["cw_mw_yw"] - f["cw_mw_yl"])
    logits = pi_logratios - ref_logratios
    logits += r["r2"] / norm * (p["cw_mw_yw"] - f["cw_mw_yw"])
    logits -= r["r2"] / norm * (p["cw_ml_yw"] - f["cw_ml_yw"])
    logits += r["r1"] / norm * (p["cw_mw_yw"] - p["cl_mw_yw"])
    logits -= r["r1"] / norm * (f["cw_mw_yw"] - f["cl_mw_yw"])
    logits += r["r4"] / norm * (p["cw_mw_yw"] - p["cl_mw_yl"])
    logits -= r["r4"] / norm * (f["cw_mw_yw"] - f["cl_mw_yl"])
    logits += r["r5"] / norm * (p["cw_mw_yw"] - p["cw_ml_yl"])
    logits -= r["r5"] / norm * (f["cw_mw_yw"] - f["cw_ml_yl"])
    logits += r["r6"] / norm * (p["cw_mw_yw"] - p["cl_ml_yw"])
    logits -= r["r6"] / norm * (f["cw_mw_yw"] - f["cl_ml_yw"])
    logits += r["r7"] / norm * (p["cw_mw_yw"] - p["cl_ml_yl"])
    logits -= r["r7"] / norm * (f["cw_mw_yw"] - f["cl_ml_yl"])
    return -F.logsigmoid(beta * logits)


SCRIPT = {"r3": 1.0, "r1": 0.5, "r2": 0.5, "r4": 0.2, "r5": 0.2, "r6": 0.2, "r7": 0.2}  # scripts/mcmdpo.sh


def test_upstream_form_divides_by_the_fixed_norm_under_ablations_and_sweeps():
    gen = torch.Generator().manual_seed(0)
    policy = {c: torch.randn(5, generator=gen, dtype=torch.float64) * 4 - 30 for c in CONDITIONS}
    ref = {c: torch.randn(5, generator=gen, dtype=torch.float64) * 4 - 30 for c in CONDITIONS}
    # "-Pair" (Table 7): VRPO = r5, CRPO = r4, VCPO = r6 set to 0, para_norm stays 2.8
    minus_pair = upstream_mcmdpo_loss(policy, ref, {**SCRIPT, "r4": 0.0, "r5": 0.0, "r6": 0.0})
    got = mcmdpo_loss(policy, ref, form="upstream", drop=["pair"], norm=2.8).loss
    torch.testing.assert_close(got, minus_pair, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mcmdpo_loss(policy, ref, form="upstream", drop=["pair"]).loss, minus_pair)
    spec = LossSpec(form="upstream", drop=("pair",))
    torch.testing.assert_close(PreferenceLoss.from_spec(spec)(policy, ref).loss, minus_pair)
    # gamma = 0.4 (Table 8): r4..r7 = 0.4, norm still 2.8
    sweep = upstream_mcmdpo_loss(policy, ref, {**SCRIPT, "r4": 0.4, "r5": 0.4, "r6": 0.4, "r7": 0.4})
    torch.testing.assert_close(mcmdpo_loss(policy, ref, form="upstream", gamma=0.4).loss, sweep)
    torch.testing.assert_close(
        mcmdpo_loss(policy, ref, form="upstream", norm=5.0).loss,
        upstream_mcmdpo_loss(policy, ref, SCRIPT, 5.0),
    )
    with pytest.raises(ValueError, match="norm applies only to form"):
        LossSpec(norm=2.8)
    with pytest.raises(ValueError, match="norm applies only to form"):
        mcmdpo_loss(policy, ref, norm=2.8)


# ---------------------------------------------------------------- 6. object extraction prompt


# RLHF-V/RLAIF-V eval/eval_gpt_obj_halbench.py:49-71 (a plain Python string: \" is a quote)
UPSTREAM_EXTRACT = """You are an expert in image objects extraction according to a question answer pair. We asked an examiner to answer a question about a picture.

[Start of Question]

<image> {question}

[End of Question]

[Start of Examiner's Answer]

{answer}

[End of Examiner's Answer]


Assume that the answer is correct, please identify all visible objects that are directly shown in the image. Please following the instructions in below:

1. You should only mention objects that are explicitly mentioned in the examiner's answer.
2. You should only extract the object names without the attributes of the objects.
3. You should not include the properties of the object, like the color, material, etc. as part of the object name in your result.
4. Make your answer precise. Present the results in a JSON list format: [\"object_1\", ..., \"object_n\"].
5. You should return an empty JSON list () if no visible objects can be found.
"""  # noqa: E501


def test_extraction_prompt_is_upstreams_text():
    assert chair.EXTRACT_PROMPT == UPSTREAM_EXTRACT and "\\" not in chair.EXTRACT_PROMPT
    item = {"question": "Describe the image.", "caption": "A dog on a sofa."}
    # eval_gpt_obj_halbench.py:309-311 (get_gpt_resp)
    prompt = UPSTREAM_EXTRACT
    prompt = prompt.replace("{question}", item["question"])
    prompt = prompt.replace("{answer}", item["caption"])
    assert chair.extraction_prompt(item["question"], item["caption"]) == prompt
    assert '["object_1", ..., "object_n"]' in prompt


# ---------------------------------------------------------------- 7. MMHal: every "Assistant:" removed


def test_mmhal_judges_the_response_without_any_assistant_prefix():
    record = {
        "question_type": "attribute",
        "image_content": ["Cat", "Sofa"],
        "question": "What colour?",
        "gt_answer": "Black.",
        "response": " Assistant: The cat is black.\nAssistant: It sleeps. ",
    }
    # fmt: skip
    # eval/eval_gpt_mmhal.py:101-105 (merge_template_answer)
    answer = record["response"].replace("Assistant:", "").strip()
    # eval/eval_gpt_mmhal.py:143-145
    image_content = ", ".join(record["image_content"])
    expected = mmhal.TEMPLATE.format(image_content, record["question"], record["gt_answer"], answer)
    assert mmhal.judge_prompt(record) == expected and "Assistant:" not in mmhal.judge_prompt(record)
    assert answer == "The cat is black.\n It sleeps."


# ---------------------------------------------------------------- 8. the question is stripped in training


def upstream_training_value(question: str) -> str:
    # llava/train/train.py:910: {'from': 'human', 'value': f"<image>\n{text['question']}"}
    value = f"<image>\n{question}"
    # llava/train/train.py:348-350 (preprocess_multimodal)
    value = value.replace("<image>", "").strip()
    value = "<image>" + "\n" + value
    value = value.strip()
    return value


def test_training_strips_the_question_as_upstream(tiny):
    _, _, processor = tiny
    question = "  \n" + QUESTION + " \n\n"
    assert "<image>\n" + training_question(question) == upstream_training_value(question)
    tok = processor.tokenizer
    assert encode_training_context(tok, question) == encode_context(tok, QUESTION)
    assert encode_training_context(tok, question) != encode_context(tok, question)


# ---------------------------------------------------------------- 9. `text` wins over top-level fields


def test_text_field_wins_and_disagreements_are_counted(tmp_path, processor_dir):
    overrides = {
        1: {"record": {"chosen": "a top-level chosen"}},  # odd positions carry `text` only
        2: {"record": {"text": json.dumps({"question": "q2", "chosen": "c2", "rejected": "r2"})}},
    }
    train, images = make_dataset(tmp_path / "data", 4, overrides)
    raw = json.loads(train.read_text())
    # llava/train/train.py:908: text = json.loads(sample['text'])
    upstream = [json.loads(sample["text"]) if "text" in sample else sample for sample in raw]
    records = load_records(train)
    assert [(r.question, r.chosen, r.rejected) for r in records] == [
        (t["question"], t["chosen"], t["rejected"]) for t in upstream
    ]
    assert [r.text_disagrees for r in records] == [(), ("chosen",), ("question", "chosen", "rejected"), ()]
    (shard,) = precompute(tmp_path / "out", train, images, processor_dir, strategy="black")
    report = report_of(shard)
    assert report["text_disagreements"] == 2
    assert report["text_disagreements_by_field"] == {"chosen": 2, "question": 1, "rejected": 1}
    assert [ShardReader(shard)[i]["chosen"] for i in range(4)] == [t["chosen"] for t in upstream]
    shards = PreferenceShards([shard])  # what the trainer's length_grouped order reads
    assert shards.text_column("chosen") == [t["chosen"] for t in upstream]
    assert sample_lengths(shards.text_column, 4, "preference") == [
        max(len(t["chosen"].split()), len(t["rejected"].split())) for t in upstream
    ]


# ---------------------------------------------------------------- 10. mcmdpo score without punkt


def test_score_cli_treebank_on_a_wordnet_only_setup(tmp_path, nltk_data):
    from nltk.tokenize import word_tokenize
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score

    rows = [
        {"idx": 1, "chosen": "A red sign on a white wall.", "response": "Assistant: a red sign on a wall"},
        {"idx": 2, "chosen": "Three dogs run in the park", "response": "three dogs in a park"},
    ]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "NLTK_DATA": nltk_data, "HOME": str(tmp_path)}  # a fresh set-up: WordNet only
    out = tmp_path / "m.json"
    run = subprocess.run([*CLI, "score", str(pred), "--tokenizer", "treebank", "--out", str(out)],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    paper = doc["metrics"]["paper"]["unrounded"]
    # get_score.py:96-99 (word_tokenize here without the Punkt sentence split: treebank)
    tokens = [
        (word_tokenize(r["chosen"], preserve_line=True),
         word_tokenize(re.sub(r"^Assistant:", "", r["response"]).strip(), preserve_line=True))
        for r in rows
    ]  # fmt: skip
    # get_score.py:34-35, 57-58, 104-108: sentence_bleu weights [0, 0, 0, 1]; meteor_score([ref], cand)
    bleu4 = np.mean([sentence_bleu([ref], cand, weights=[0, 0, 0, 1]) for ref, cand in tokens]) * 100
    meteor = np.mean([meteor_score([ref], cand) for ref, cand in tokens]) * 100
    assert paper["bleu_4"] == pytest.approx(bleu4) and paper["meteor"] == pytest.approx(meteor)
    assert any("tokenizer=treebank" in d for d in doc["deviations"])
    from mcmdpo.evaluation.metrics import nlp

    if nlp.find_resource(nlp.PUNKT) is None:  # the default protocol needs punkt_tab: one clear line
        no_env = {**env, "NLTK_DATA": ""}  # the folder comes from --nltk-data instead
        options = ["--nltk-data", nltk_data, "--out", str(out)]
        default = subprocess.run(
            [*CLI, "score", str(pred), *options], capture_output=True, text=True, env=no_env
        )
        assert default.returncode == 2 and "--tokenizer treebank" in default.stderr
        assert len(default.stderr.strip().splitlines()) == 1 and f"['{nltk_data}'," in default.stderr


@pytest.mark.parametrize("protocol", ["paper", "coco"])
def test_score_cli_empty_predictions_is_one_error_line(tmp_path, protocol):
    pred = tmp_path / "empty.jsonl"
    pred.write_text("")
    options = ["--protocol", protocol, "--out", str(tmp_path / "m.json")]
    run = subprocess.run([*CLI, "score", str(pred), *options], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"error: {pred}: no predictions in the file: nothing to score"
    ]
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------- 11. length-grouped data order


def split_to_even_chunks(indices, lengths, num_chunks):
    # llava/train/llava_trainer.py:66-85
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    num_indices_per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    chunks_lengths = [0 for _ in range(num_chunks)]
    for index in indices:
        shortest_chunk = chunks_lengths.index(min(chunks_lengths))
        chunks[shortest_chunk].append(index)
        chunks_lengths[shortest_chunk] += lengths[index]
        if len(chunks[shortest_chunk]) == num_indices_per_chunk:
            chunks_lengths[shortest_chunk] = float("inf")
    return chunks


def get_length_grouped_indices(lengths, batch_size, world_size, generator=None, merge=True):
    # llava/train/llava_trainer.py:116-124
    indices = torch.randperm(len(lengths), generator=generator)
    megabatch_size = world_size * batch_size
    megabatches = [indices[i : i + megabatch_size].tolist() for i in range(0, len(lengths), megabatch_size)]
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    megabatches = [split_to_even_chunks(megabatch, lengths, world_size) for megabatch in megabatches]
    return [i for megabatch in megabatches for batch in megabatch for i in batch]


@pytest.mark.parametrize(("world", "accum", "micro"), [(1, 4, 2), (2, 2, 3), (4, 1, 1)])
def test_length_grouped_order_is_upstreams_sampler(world, accum, micro):
    n, seed = 101, 7
    lengths = [int(x) for x in np.random.default_rng(1).integers(1, 80, n)]
    layout = BatchLayout(world * accum * micro, micro, accum, world)
    order = DataOrder(n, layout, seed, lengths)
    assert order.steps_per_epoch == n // layout.global_batch  # the last n mod G samples are not used
    for epoch in range(2):
        # llava_trainer.py:167-174: LengthGroupedSampler(train_batch_size, world_size * accumulation, ...)
        flat = get_length_grouped_indices(lengths, micro, world * accum, epoch_generator(seed, epoch))
        for step in range(order.steps_per_epoch):
            megabatch = flat[step * layout.global_batch : (step + 1) * layout.global_batch]
            chunks = [megabatch[c * micro : (c + 1) * micro] for c in range(world * accum)]
            for rank in range(world):  # accelerate deals micro-batch c to rank c % world
                mine = [
                    list(map(int, b)) for b in order.micro_batches(epoch * order.steps_per_epoch + step, rank)
                ]
                assert mine == [chunks[j * world + rank] for j in range(accum)]
    again = DataOrder(n, layout, seed, lengths)  # a pure function of (seed, epoch): exact resume
    assert np.array_equal(again.permutation(1), order.permutation(1))
    assert not np.array_equal(order.permutation(0), order.permutation(1))


def test_sample_lengths_are_upstreams_modality_lengths():
    columns = {"question": ["Describe  it\nnow", "q"], "chosen": ["a b c", "a"], "rejected": ["x", "x y z w"]}
    # llava/train/train.py:889-896 (DPODataset.modality_lengths)
    dpo = [
        max(len(c.split()), len(r.split()))
        for c, r in zip(columns["chosen"], columns["rejected"], strict=True)
    ]
    # llava/train/train.py:730-736 (LazySupervisedDataset.modality_lengths) over "<image>\n" + q, answer
    conversations = [
        [{"value": f"<image>\n{q}"}, {"value": c}]
        for q, c in zip(columns["question"], columns["chosen"], strict=True)
    ]  # noqa: E501
    sft = [sum(len(conv["value"].split()) for conv in sample) for sample in conversations]
    assert sample_lengths(columns.__getitem__, 2, "preference") == dpo == [3, 4]
    assert sample_lengths(columns.__getitem__, 2, "sft") == sft == [7, 3]


def test_sft_shard_lengths_are_upstreams_modality_lengths():
    """[sft] data = "files": lengths from the sft_data shards' conversations column (image token
    removed at parsing) equal upstream's over the original LLaVA conversation records."""
    records = [
        {"id": 1, "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is  shown?"}, {"from": "gpt", "value": "A red kite."},
            {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "Over a  beach at dusk"}]},
        {"id": 2, "image": "b.jpg", "conversations": [
            {"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "x"}]},
    ]  # fmt: skip
    # llava/train/train.py:730-736 (LazySupervisedDataset.modality_lengths; every sample has an image)
    upstream = [sum(len(conv["value"].split()) for conv in sample["conversations"]) for sample in records]
    column = [json.dumps([list(t) for t in parse_sft_record(r, i).turns]) for i, r in enumerate(records)]
    assert conversation_lengths(column) == upstream == [13, 3]


# ---------------------------------------------------------------- 12. mDPO's rejected image


def torchvision_get_params(height: int, width: int, scale=(0.01, 0.2), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """torchvision transforms/v2/_geometry.py RandomResizedCrop._get_params (global generator), with
    mDPO's v2.RandomResizedCrop(size=image.size()[-2:], scale=(0.01, 0.2)) (modeling_bunny_phi.py:2361)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            break
    else:
        raise AssertionError("fallback not expected at these sizes")
    return dict(top=i, left=j, height=h, width=w)


def test_mdpo_crop_samples_like_torchvision_and_covers_at_most_a_fifth():
    state = torch.random.get_rng_state()
    try:
        for s in range(300):
            size = (336, 336) if s % 3 else (48 + s, 200)
            torch.manual_seed(s)
            expected = torchvision_get_params(*size)
            box = noise.resized_crop_params(*size, torch.Generator().manual_seed(s))
            assert box == (expected["top"], expected["left"], expected["height"], expected["width"])
            assert box[2] * box[3] <= 0.2 * size[0] * size[1] * 1.05  # rounding of w and h
    finally:
        torch.random.set_rng_state(state)
    x = np.random.default_rng(0).standard_normal((2, 3, 336, 336)).astype(np.float32)
    got = noise.mdpo_crop(x, noise.sample_rng(0, 9, "mdpo_crop"))
    generator = noise.torch_generator(noise.sample_rng(0, 9, "mdpo_crop"))
    for p in range(2):  # F.resized_crop on a tensor: crop, then interpolate (bilinear)
        top, left, h, w = noise.resized_crop_params(336, 336, generator)
        patch = torch.from_numpy(x[p : p + 1, :, top : top + h, left : left + w])
        expected = F.interpolate(patch, (336, 336), mode="bilinear", align_corners=False, antialias=False)
        np.testing.assert_array_equal(got[p], expected[0].numpy())


def write(tmp_path: Path, kind: str, strategy: str | None = None) -> Path:
    body = f"""
[run]
name = "p"
output_root = "{tmp_path / "runs"}"
[data]
[model]
[precompute]
{f'strategy = "{strategy}"' if strategy else ""}
[reference]
[preference.loss]
kind = "{kind}"
"""
    path = tmp_path / f"{kind}-{strategy}.toml"
    path.write_text(body)
    return path


def precompute_instances(recipe_path: Path) -> list[tuple[Any, list[str]]]:
    plan = build_plan(load_recipe(recipe_path))
    return [(i.spec["strategy"], [t.task_id for t in i.tasks]) for i in plan.stage("precompute").instances]


def test_mdpo_uses_its_crop_by_default_and_the_task_ids_say_so(tmp_path):
    ((mdpo, mdpo_ids),) = precompute_instances(write(tmp_path, "mdpo"))
    ((mcm, mcm_ids),) = precompute_instances(write(tmp_path, "mcmdpo"))
    assert (mdpo, mcm) == ("mdpo_crop", "diffusion") and set(mdpo_ids).isdisjoint(mcm_ids)
    ((chosen, chosen_ids),) = precompute_instances(write(tmp_path, "mdpo", "diffusion"))
    assert chosen == "diffusion" and chosen_ids == mcm_ids  # a named strategy is kept
    sweep = write(tmp_path, "mcmdpo")
    sweep.write_text(sweep.read_text() + '[sweep]\n"preference.loss.kind" = ["mcmdpo", "mdpo"]\n')
    assert sorted(s for s, _ in precompute_instances(sweep)) == ["diffusion", "mdpo_crop"]
    assert resolve_strategy("auto", {}) == "diffusion" and PrecomputeSpec().strategy == "auto"


# ---------------------------------------------------------------- the vLLM engine switch


def test_vllm_engine_is_a_generation_setting_and_fails_in_one_line_without_vllm_or_gpu(tmp_path):
    assert "engine" in GenerationConfig.field_names()  # part of every eval task key
    base = tmp_path / "e.toml"
    base.write_text(
        f'[run]\nname = "e"\noutput_root = "{tmp_path}"\n[data]\n[model]\n[eval]\nbenchmarks = ["test"]\n'
    )
    hf = [t.task_id for t in build_plan(load_recipe(base)).stage("eval").tasks]
    with_vllm = load_recipe(base, ['eval.engine="vllm"'])
    vllm = [t.task_id for t in build_plan(with_vllm).stage("eval").tasks]
    assert set(hf).isdisjoint(vllm)
    listed = [s for s in check_recipe(with_vllm) if s.name == "python package vllm"]
    assert len(listed) == 1 and listed[0].optional and listed[0].how_to_obtain == "pip install 'mcmdpo[vllm]'"
    with pytest.raises(ValueError, match="engine 'vllm' generates greedily"):
        EvalSpec(engine="vllm", num_beams=3)
    if torch.cuda.is_available() and __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM and a GPU are present")
    with pytest.raises(VllmUnavailable) as info:
        generator_loader("vllm")
    assert len(info.value.one_line().splitlines()) == 1 and "eval engine 'vllm'" in str(info.value)


def test_eval_task_with_vllm_fails_before_loading_a_model(tiny, tmp_path, nltk_data):
    from mcmdpo.stages.eval import run_eval

    if torch.cuda.is_available() and __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM and a GPU are present")
    folder, _, _ = tiny
    ctx = make_context(tmp_path, folder.parent, talt_files(tmp_path / "talt", 2), nltk_data, engine="vllm")
    with pytest.raises(
        VllmUnavailable, match=r"^eval engine 'vllm': (vLLM is not installed|vLLM needs a CUDA GPU)"
    ):
        run_eval(ctx)
    assert not list(ctx.work_dir.glob("predictions.*.jsonl"))  # nothing generated, no ledger
