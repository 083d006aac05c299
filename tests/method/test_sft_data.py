"""SFT on its own data: LLaVA conversations and question/chosen files -> sft_data shards of encoded
images -> the trainer (decoding in DataLoader workers), exact resume after SIGKILL, plan wiring."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.batch.recipe.errors import RecipeError
from mcmdpo.method.data.sft_records import load_sft_records
from mcmdpo.method.data.sft_shards import SftShards, SftShardWriter, SftSource, build_sft_shard
from mcmdpo.smoke import fixtures
from tests.helpers.training import assert_bit_identical, losses, run, submit_and_kill, task_dir

pytestmark = pytest.mark.usefixtures("_short_result_wait")  # SIGKILLed jobs write no result file

STEPS = 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("sft-sources")
    return {
        "conv": fixtures.sft_conversations(root / "conv", 6),
        "rlhfv": fixtures.preference_files(root / "rlhfv", 2, "parquet", context=False),
    }


def write_records(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


# ---------------------------------------------------------------- records


def test_conversation_and_question_chosen_layouts_with_bad_records(tmp_path, sources):
    human = {"from": "human", "value": "Describe.\n<image>"}
    records = [
        {"id": "a", "image": "x.png", "conversations": [human, {"from": "gpt", "value": "A dog."},
                                                          {"from": "human", "value": "Colour?"},
                                                          {"from": "gpt", "value": "Brown."}]},
        {"id": "b", "image": "y.png", "conversations": [human]},
        {"id": "c", "image": "y.png", "conversations": [{"from": "gpt", "value": "x"}, human]},
        {"id": "d", "conversations": [human, {"from": "gpt", "value": "A dog."}]},
        {"idx": 7, "image": {"path": "z.png"}, "text": json.dumps({"question": "Q?", "chosen": "C."})},
        {"id": "a", "image": "x.png", "conversations": [human, {"from": "gpt", "value": "again"}]},
    ]  # fmt: skip
    got = load_sft_records(write_records(tmp_path / "s.json", records))
    assert got[0].turns == (("Describe.", "A dog."), ("Colour?", "Brown.")) and got[0].problem is None
    assert [r.problem[0] if r.problem else None for r in got] == [
        None, "malformed_conversation", "malformed_conversation", "missing_field", None, "duplicate_id",
    ]  # fmt: skip
    assert (got[4].id, got[4].image, got[4].turns) == (7, "z.png", (("Q?", "C."),))
    parquet = load_sft_records(sources["rlhfv"]["file"])
    assert len(parquet) == 2 and parquet[0].image_bytes[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")
    assert parquet[0].turns[0][0] == fixtures.NO_CONTEXT_QUESTION
    assert len(load_sft_records(sources["conv"]["file"], limit=4)) == 4


def test_one_turn_conversation_tokenises_like_the_preference_sft_path(tmp_path):
    from mcmdpo.method.model import build_tiny_llava
    from mcmdpo.method.model.load import load_llava
    from mcmdpo.method.model.template import encode_conversation, encode_prompt

    path = build_tiny_llava(tmp_path / "m", ["a red bus on a sunny day", "Describe the scene."])
    tok = load_llava(path)[1].tokenizer
    one = encode_conversation(tok, [("Describe the scene.", "a red bus")], 9)
    ref = encode_prompt(tok, "Describe the scene.", "a red bus", 9)
    assert one.input_ids(5) == ref.input_ids(5) and one.labels(5) == ref.labels(5)
    assert one.prompt_length == ref.prompt_length
    two = encode_conversation(tok, [("Describe the scene.", "a red bus"), ("Colour?", "red")], 9)
    supervised = [t for t in two.labels(5) if t != -100]
    answers = [*two.turns[0][1], *two.turns[1][1]]
    assert supervised == answers and answers[-1] == tok.eos_token_id == two.turns[0][1][-1]
    assert tok.decode(two.input_ids(5)[len(one.input_ids(5)) :]).startswith("USER: Colour? ASSISTANT:")


# ---------------------------------------------------------------- shards


def build(sources: list[SftSource], folder: Path, num_shards: int, **kw) -> tuple[SftShards, list[dict]]:
    paths, reports = [], []
    for k in range(num_shards):
        path = folder / f"s{k}.h5"
        writer = SftShardWriter(path)
        try:
            reports.append(build_sft_shard(sources, k, num_shards, writer, **kw))
            writer.close()
        finally:
            writer.abort()
        paths.append(path)
    return SftShards(paths), reports


def test_shards_keep_encoded_images_or_paths_and_count_per_source(tmp_path, sources):
    conv, rlhfv = sources["conv"], sources["rlhfv"]
    mixed = [SftSource("conv", conv["file"], conv["images"]), SftSource("rlhfv", rlhfv["file"])]
    shards, reports = build(mixed, tmp_path / "bytes", 3)
    records = json.loads(conv["file"].read_text())
    assert len(shards) == 8 and shards[0]["id"] == f"conv:{records[0]['id']}"
    assert shards[0]["image"] == (conv["images"] / records[0]["image"]).read_bytes()
    second = ("And in three words?", " ".join(records[2]["conversations"][1]["value"].split()[:3]))
    assert shards[2]["turns"][1] == second and len(shards[1]["turns"]) == 1
    assert [shards[i]["source"] for i in range(8)] == ["conv"] * 6 + ["rlhfv"] * 2
    assert sum(r["sources"]["conv"]["kept"] for r in reports) == 6
    assert sum(r["sources"]["rlhfv"]["kept"] for r in reports) == 2
    paths_only, _ = build(mixed, tmp_path / "paths", 1, store="paths")
    assert paths_only[0]["image"] == conv["images"] / records[0]["image"]
    assert isinstance(paths_only[7]["image"], bytes)  # parquet images have no path to keep
    (conv["images"] / records[1]["image"]).rename(tmp_path / "moved")
    try:
        with pytest.raises(Exception, match=r"record 2 \(id='sft-.*'\): missing_image"):
            build(mixed, tmp_path / "fail", 1)
        _, (report,) = build(mixed, tmp_path / "skip", 1, on_bad_record="skip")
        assert report["sources"]["conv"] == {"records": 6, "kept": 5, "skipped": 1}
        assert report["skipped_by_reason"] == {"missing_image": 1}
    finally:
        (tmp_path / "moved").rename(conv["images"] / records[1]["image"])


def test_worker_processes_load_the_same_batches_as_the_trainer_thread(tmp_path, sources):
    from mcmdpo.method.model import build_tiny_llava
    from mcmdpo.method.model.load import load_llava
    from mcmdpo.method.samples import ConversationSource
    from mcmdpo.method.train.batches import DataOrder, Prefetcher, WorkerLoader
    from mcmdpo.method.train.objectives import SftObjective
    from mcmdpo.method.train.spec import BatchLayout

    conv = sources["conv"]
    shards, _ = build([SftSource("conv", conv["file"], conv["images"])], tmp_path, 2)
    model, processor = load_llava(build_tiny_llava(tmp_path / "m", ["a photo"]))
    objective = SftObjective(
        ConversationSource(shards, processor, "pad"), 400, 0, model.config.image_token_id
    )
    order = DataOrder(len(shards), BatchLayout(4, 2, 2, 1), seed=3)
    workers = WorkerLoader(objective.item, objective.collate, order, 0, 1, 3, workers=2)
    thread = Prefetcher(lambda s: [objective.load(b) for b in order.micro_batches(s, 0)], 3)
    for step in (1, 2):
        for a, b in zip(workers.get(step), thread.get(step), strict=True):
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            assert all(torch.equal(x, y) for x, y in zip(a.pixels, b.pixels, strict=True))
            assert a.truncated == b.truncated and a.pixels[0].shape == (1, 3, 56, 56)
    workers.close()
    thread.close()


# ---------------------------------------------------------------- training and plans


RECIPE = """\
[run]
name = "{name}"
output_root = "{root}/runs"
seed = 3

[cluster]
executor = "{executor}"

[model]

[sft_data]
num_shards = 2

[sft]
data = "files"
epochs = {epochs}
lr = 2e-3
warmup_ratio = 0.0
global_batch_size = 2
micro_batch_size = 1
precision = "fp32"
gradient_checkpointing = false
checkpoint_every_minutes = 1000.0
checkpoint_every_steps = 2
keep_checkpoints = true
data_workers = 2
deepspeed = {{ zero_optimization = {{ stage = 2 }} }}

[[sft.files]]
file = "{conv}"
images = "{images}"

[[sft.files]]
file = "{rlhfv}"
name = "rlhfv"
"""


def write_recipe(root: Path, name: str, sources: dict, executor: str, epochs: int = 2) -> Path:
    path = root / f"{name}.toml"
    conv, rlhfv = sources["conv"], sources["rlhfv"]
    text = RECIPE.format(name=name, root=root, executor=executor, epochs=epochs, conv=conv["file"],
                         images=conv["images"], rlhfv=rlhfv["file"])  # fmt: skip
    path.write_text(text)
    return path


def test_sft_on_files_resumes_exactly_after_sigkill(tmp_path, sources):
    baseline_path = write_recipe(tmp_path, "base", sources, "debug")
    run(baseline_path)
    baseline = task_dir(baseline_path, "sft")
    values = losses(baseline)
    assert len(values) == STEPS and values[-1] < values[0]  # 8 samples / 2 per step x 2 epochs
    data = load_recipe(baseline_path).run_dir / "sft_data"
    summaries = [json.loads((d / "DONE").read_text())["summary"] for d in data.iterdir()]
    assert sum(s["kept_sft"] for s in summaries) == 6 and sum(s["kept_rlhfv"] for s in summaries) == 2

    seed = random.randrange(1 << 30)
    at_step = random.Random(seed).randint(3, STEPS - 2)
    killed = write_recipe(tmp_path, "killed", sources, "local")
    submit_and_kill(killed, "sft", at_step)
    run(killed)
    task = task_dir(killed, "sft")
    context = f"(killed at step {at_step}, seed {seed})"
    assert json.loads((task / "train.json").read_text())["resumes"] >= 1, context
    assert_bit_identical(task, baseline, context)
    assert losses(task) == values, context


def test_plan_wiring_shares_sft_across_preference_data_sweeps(tmp_path, sources):
    path = write_recipe(tmp_path, "plan", sources, "local")
    text = path.read_text() + "\n[data]\n\n[precompute]\n\n[reference]\n\n[preference]\n"
    text += '\n[sweep]\n"precompute.strategy" = ["diffusion", "black"]\n'
    path.write_text(text)
    plan = build_plan(load_recipe(path))
    assert plan.stage("sft").after == ["model", "sft_data"]
    assert [len(plan.stage(s).instances) for s in ("sft_data", "sft", "reference", "preference")] == [
        1,
        1,
        2,
        2,
    ]
    lr = build_plan(load_recipe(path, ["sft.lr=1e-4"]))
    assert [t.task_id for t in lr.stage("sft_data").tasks] == [
        t.task_id for t in plan.stage("sft_data").tasks
    ]
    assert lr.stage("sft").tasks[0].task_id != plan.stage("sft").tasks[0].task_id
    path.write_text(path.read_text().replace("[sft_data]\nnum_shards = 2\n", ""))
    with pytest.raises(
        RecipeError, match=r"plan.toml:\d+: sft.data: data = 'files' trains on the sft_data shards"
    ):
        load_recipe(path)  # found when the recipe is validated, with its line
