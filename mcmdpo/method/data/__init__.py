"""Preference data: upstream readers (``records``), image decoding and preprocessing (``images``),
HDF5 shards (``shards``) and the synthetic demo dataset (``demo``).

Submodules import numpy/PIL/h5py/transformers lazily where they can; import them directly.
"""
