"""Training machinery shared by the ``sft`` and ``preference`` stages (DeepSpeed, one process per GPU).

- :mod:`mcmdpo.method.train.spec`        recipe fields of both stages (pydantic only: imported by stages)
- :mod:`mcmdpo.method.train.engine`      torch.distributed + DeepSpeed setup, optimizer, LR schedule
- :mod:`mcmdpo.method.train.batches`     deterministic data order from (seed, epoch), micro-batches per rank
- :mod:`mcmdpo.method.train.objectives`  the SFT loss and the preference losses on a micro-batch
- :mod:`mcmdpo.method.train.checkpoint`  ``step-NNNNNNN/`` folders, completion marker, keep-last-k, RNG state
- :mod:`mcmdpo.method.train.metrics`     per-step JSONL, optional TensorBoard, rank-0 progress
- :mod:`mcmdpo.method.train.export`      the final HF folder (save_pretrained + processor), ZeRO-3 gathering
- :mod:`mcmdpo.method.train.loop`        the trainer: setup / step / maybe_log / maybe_save / export

Only :mod:`mcmdpo.method.train.spec` may be imported by stage modules at import time; everything else
imports torch and DeepSpeed.
"""
