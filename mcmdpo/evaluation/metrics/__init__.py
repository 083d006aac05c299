"""Evaluation metrics, one module per concern.

- :mod:`~mcmdpo.evaluation.metrics.predictions`: the JSONL prediction ledger (append, resume, torn lines,
  merge).
- :mod:`~mcmdpo.evaluation.metrics.nlp`: NLTK resources and the tokenise / lemmatise / noun-filter modes.
- :mod:`~mcmdpo.evaluation.metrics.altext`: alt-text metrics, ``paper`` and ``coco`` protocols.
- :mod:`~mcmdpo.evaluation.metrics.chair`: Object HalBench CHAIR.
- :mod:`~mcmdpo.evaluation.metrics.amber`: AMBER generative metrics (CHAIR, Cover, Hal, Cog).
- :mod:`~mcmdpo.evaluation.metrics.judge`: OpenAI-compatible chat client with cache, concurrency and retries.
- :mod:`~mcmdpo.evaluation.metrics.mmhal`: MMHal-Bench judged ratings.

Nothing here imports torch; NLTK, rouge and pycocoevalcap are imported where they are used.
"""
