"""Curation library: raw (context, image, alt-text) triples -> SFT, preference and test files.

Modules: ``spec`` (the ``[curate]`` recipe section), ``raw`` (reading shards of the raw file),
``filters``, ``signatures`` (pHash, MinHash), ``dedupe`` (bucketed near-duplicate clustering),
``scan`` (one shard: filters + signatures), ``duplicates`` (every shard: clusters), ``names``,
``prompts`` (the paper's prompts and reply parsers), ``pipeline`` (the LLM steps per record),
``outputs`` (the files and the funnel). The stages ``curate_scan``, ``curate_dedupe``, ``curate``
and ``curate_split`` (``mcmdpo/stages/``) wire them.
"""
