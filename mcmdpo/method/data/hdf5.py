"""The HDF5 attribute codec shared by the precompute shards and the reference log-prob files.

Scalars, strings and arrays are stored as they are; anything structured (lists, dicts) as canonical
JSON text, decoded back when read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import h5py


def encode_attr(value: Any) -> Any:
    """An HDF5 attribute value: scalars, strings and arrays as is; lists and dicts as JSON text."""
    if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.ndarray)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def decode_attr(value: Any) -> Any:
    """The inverse of :func:`encode_attr` (bytes decoded, JSON text parsed, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(h5: h5py.Group | h5py.Dataset) -> dict[str, Any]:
    """Every attribute of an open ``h5py`` file or dataset, decoded."""
    return {key: decode_attr(value) for key, value in h5.attrs.items()}


def write_attrs(h5: h5py.Group | h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    """Set every attribute of ``attrs`` on an open ``h5py`` file or dataset, encoded."""
    for key, value in attrs.items():
        h5.attrs[key] = encode_attr(value)
