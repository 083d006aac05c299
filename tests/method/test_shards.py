"""HDF5 shards: write/read round trips, anyres patches, the all-shards dataset and its index."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from mcmdpo.batch.stage import TaskInput
from mcmdpo.method.data.shards import (
    PreferenceShards,
    Sample,
    ShardReader,
    ShardWriter,
    shard_content_hash,
    write_index,
)

SHAPE = (3, 8, 8)


def sample(i: int, patches: int = 1, rejected_patches: int | None = None) -> Sample:
    rng = np.random.default_rng(i)
    rp = patches if rejected_patches is None else rejected_patches
    return Sample(
        sample_id=f"id{i}",
        position=i,
        image_path=f"img/{i}.jpg",
        question=f"question {i} \N{GRINNING FACE}",
        rejected_question=f"other question {i}",
        chosen=f"chosen {i} caf\N{LATIN SMALL LETTER E WITH ACUTE}",
        rejected=f"rejected {i}",
        rejected_context_position=i + 100,
        chosen_pixels=rng.standard_normal((patches, *SHAPE), dtype=np.float32),
        rejected_pixels=rng.standard_normal((rp, *SHAPE), dtype=np.float32),
        chosen_size=(10 + i, 20 + i),
        rejected_size=(5, 6),
        rejected_image_position=-1 if i % 2 else i + 1,
    )


def write(path, samples, max_patches=1, dtype="float16", attrs=None):
    with ShardWriter(
        path, capacity=2, max_patches=max_patches, patch_shape=SHAPE, dtype=dtype, attrs=attrs
    ) as w:
        for s in samples:
            w.add(s)
        w.close({"extra": {"a": 1}})
    return path


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, dtype):
    samples = [sample(i) for i in range(5)]  # more than the capacity: the writer grows
    path = write(
        tmp_path / "s.h5", samples, dtype=dtype, attrs={"strategy": "diffusion", "spec": {"x": [1, 2]}}
    )
    reader = ShardReader(path)
    assert len(reader) == 5
    assert reader.attrs["strategy"] == "diffusion" and reader.attrs["spec"] == {"x": [1, 2]}
    assert reader.attrs["extra"] == {"a": 1} and reader.attrs["num_samples"] == 5
    for i, s in enumerate(samples):
        item = reader[i]
        assert item["chosen_pixels"].dtype == np.dtype(dtype)
        assert np.array_equal(item["chosen_pixels"], s.chosen_pixels.astype(dtype))
        assert np.array_equal(item["rejected_pixels"], s.rejected_pixels.astype(dtype))
        assert (item["id"], item["question"], item["chosen"]) == (s.sample_id, s.question, s.chosen)
        assert (item["rejected_question"], item["rejected"], item["image_path"]) == (
            s.rejected_question,
            s.rejected,
            s.image_path,
        )
        assert list(item["chosen_image_size"]) == list(s.chosen_size)
        assert item["rejected_context_positions"] == i + 100 and item["positions"] == i
        assert item["rejected_image_positions"] == s.rejected_image_position
    with h5py.File(path) as f:
        assert f["chosen_pixels"].chunks == (1, 1, *SHAPE) and f["chosen_pixels"].compression is None
    with pytest.raises(IndexError):
        reader[5]


def test_anyres_variable_patches_store_only_written_chunks(tmp_path):
    samples = [sample(0, 2, 5), sample(1, 5, 1), sample(2, 3, 3)]
    path = write(tmp_path / "a.h5", samples, max_patches=5)
    reader = ShardReader(path)
    assert [reader[i]["chosen_pixels"].shape[0] for i in range(3)] == [2, 5, 3]
    assert [reader[i]["rejected_pixels"].shape[0] for i in range(3)] == [5, 1, 3]
    assert np.array_equal(reader[1]["chosen_pixels"], samples[1].chosen_pixels.astype(np.float16))
    with h5py.File(path) as f:
        per_chunk = np.prod(SHAPE) * 2
        assert f["chosen_pixels"].id.get_storage_size() == (2 + 5 + 3) * per_chunk
        assert list(f["rejected_num_patches"][:]) == [5, 1, 3]


def test_wrong_shape_is_refused(tmp_path):
    with (
        ShardWriter(tmp_path / "x.h5", capacity=1, max_patches=1, patch_shape=SHAPE) as w,
        pytest.raises(ValueError),
    ):
        w.add(sample(0, patches=2))


def test_all_shards_as_one_dataset_with_index(tmp_path):
    paths = [
        write(tmp_path / "s0.h5", [sample(0), sample(1)]),
        write(tmp_path / "s1.h5", []),
        write(tmp_path / "s2.h5", [sample(2), sample(3), sample(4)]),
    ]
    ds = PreferenceShards(paths)
    assert len(ds) == 5 and [ds[i]["id"] for i in range(5)] == [f"id{i}" for i in range(5)]
    assert ds.locate(2) == (2, 0) and ds.locate(-1) == (2, 2) and ds[-5]["id"] == "id0"
    with pytest.raises(IndexError):
        ds[5]
    index = write_index(paths, tmp_path / "index" / "shards.json")
    assert index["num_samples"] == 5 and index["shards"][0]["path"] == "../s0.h5"
    from_index = PreferenceShards.from_index(tmp_path / "index" / "shards.json")
    assert np.array_equal(from_index[3]["chosen_pixels"], ds[3]["chosen_pixels"])
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers: no open handles cross processes
    assert clone[4]["chosen"] == ds[4]["chosen"] and np.array_equal(
        clone[4]["rejected_pixels"], ds[4]["rejected_pixels"]
    )


def test_from_inputs_orders_by_shard_and_refuses_gaps(tmp_path):
    paths = [write(tmp_path / f"t{k}" / "shard.h5", [sample(k)]) for k in range(3)]

    def task(k, total=3):
        return TaskInput(
            "precompute", f"t{k}", tmp_path / f"t{k}", {"shard": k, "num_shards": total}, (paths[k],)
        )

    ds = PreferenceShards.from_inputs([task(2), task(0), task(1)])
    assert [ds[i]["id"] for i in range(3)] == ["id0", "id1", "id2"]
    with pytest.raises(ValueError, match="incomplete"):
        PreferenceShards.from_inputs([task(0), task(2)])
    with pytest.raises(ValueError, match="incomplete"):
        PreferenceShards.from_inputs([task(0), task(1), task(2, total=4)])


def test_content_hash_compares_values_not_bytes(tmp_path):
    a = write(tmp_path / "a.h5", [sample(0), sample(1)])
    b = write(tmp_path / "b.h5", [sample(0), sample(1)])
    c = write(tmp_path / "c.h5", [sample(0), sample(2)])
    assert shard_content_hash(a) == shard_content_hash(b) != shard_content_hash(c)
