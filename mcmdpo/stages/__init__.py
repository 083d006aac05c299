"""Built-in stages, one file each; importing this package registers them in pipeline order.

Stage modules import heavy libraries (torch, transformers, h5py) inside functions only, so that
`mcmdpo validate` and `mcmdpo status` stay fast.
"""

import importlib
import importlib.util

PIPELINE = (
    "curate_scan",
    "curate_dedupe",
    "curate",
    "curate_split",
    "data",
    "model",
    "precompute",
    "sft_data",
    "sft",
    "reference",
    "preference",
    "eval",
    "score",
    "represent",
    "report",
)

for _name in PIPELINE:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")
