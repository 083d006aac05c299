"""The benchmark registry: one module per benchmark, each carrying its files, reader, scorer and assets.

=========  ========  ==========================================================================
name       kind      source files (recipe section ``[eval.<name>]``)
=========  ========  ==========================================================================
test       altext    the ``[data]`` stage's test split (demo or upstream files); no section
talt       altext    ``file``: upstream test JSONL (``image_path``, ``question``, ``chosen``, ``idx``),
palt       altext    ``images``: the folder the image paths are relative to
objhal     objhal    ``file``: ``obj_halbench_300_with_image.jsonl`` (base64 ``image``, ``image_id``,
                     ``question``); ``coco_dir`` with the COCO 2014 instance + caption files;
                     ``synonyms``: ``synonyms_refine.txt``
mmhal      mmhal     ``file``: ``mmhal-bench_answer_template.json`` (a JSON list of 96) or a JSONL with
                     base64 ``image``; ``images``: folder with the images
amber      amber     ``data_dir``: AMBER's ``data/`` folder; ``queries``; ``images``
=========  ========  ==========================================================================

A :class:`Benchmark` entry (keywords only) holds the source section's spec, ``read(source) -> [Item]``,
``score(records, env) -> (metrics, samples, deviations)`` and ``assets(name, section, settings,
checksums)`` (the external resources it needs). Adding a benchmark = one module here (imported at the
bottom of this file) plus its test; the types live in :mod:`mcmdpo.evaluation.benchmarks.registry`.
Scoring settings (protocols, NLTK modes, judge, extractor, similarity) are the ``[score]`` section
(``settings`` below); file locations are ``[eval.<name>]``.
"""

# each module registers itself; this order is the order of listings (test, talt, palt, objhal, mmhal, amber)
from mcmdpo.evaluation.benchmarks import altext, amber, mmhal, objhal  # noqa: E402, I001
from mcmdpo.evaluation.benchmarks.registry import (
    BENCHMARKS,
    PATH_KEYS,
    Benchmark,
    Item,
    Kind,
    ScoreEnv,
    Scorer,
    get_benchmark,
    read_items,
    register_benchmark,
    shard_items,
    source_paths,
)

__all__ = [
    "BENCHMARKS",
    "PATH_KEYS",
    "Benchmark",
    "Item",
    "Kind",
    "ScoreEnv",
    "Scorer",
    "altext",
    "amber",
    "get_benchmark",
    "mmhal",
    "objhal",
    "read_items",
    "register_benchmark",
    "shard_items",
    "source_paths",
]
