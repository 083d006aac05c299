"""Counting the activation bytes autograd keeps for backward, on any device (``meta`` included).

:class:`SavedBytes` registers ``torch.autograd.graph.saved_tensors_hooks`` and, read right after the
forward pass, adds up the bytes of the distinct storages saved for backward that are still alive,
leaving out the parameters (a linear layer saves its weight; not an activation) and counting a
storage saved by several ops (a mask shared by every layer, views of one tensor) once. What a graph
branch the loss does not use saved is freed with it, except what such a branch saved as an op's own
output (a reference cycle through the hook): at LLaVA-1.6 some tensors of the vision tower's unused
last layer, counted although a GPU frees them.
Non-reentrant gradient checkpointing saves through hooks of its own and keeps each checkpointed
layer's inputs alive instead: with ``layers`` given, the tensor
inputs of those modules are counted as kept.

:func:`fused_attention` makes ``scaled_dot_product_attention`` save what a fused GPU kernel saves (query,
key, value, output, an fp32 log-sum-exp per query and head, the mask) instead of what the kernel of the
device at hand keeps (on CPU and ``meta`` the math path keeps the ``L x L`` probabilities): the counts
then describe the GPU. Gradients stay exact (backward recomputes the attention).

:func:`meta_friendly` switches off what cannot run on ``meta`` (transformers reads mask values to find
packed sequences and checks placeholder counts by value); the rehearsal checks placeholder counts itself.
"""

from __future__ import annotations

import contextlib
import gc
import os
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def storage_key(tensor: torch.Tensor) -> int:
    """Identity of a tensor's storage (``meta`` tensors have no data pointer, but a storage object)."""
    return int(tensor.untyped_storage()._cdata)


def storage_bytes(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().nbytes())


class SavedBytes:
    """Bytes of the distinct non-parameter storages saved for backward inside the ``with`` block."""

    def __init__(self, model: torch.nn.Module, layers: Iterable[torch.nn.Module] = ()):
        self.model = model
        self.layers = list(layers)
        self.saved: list[weakref.ref] = []
        self._stack = contextlib.ExitStack()

    @property
    def total(self) -> int:
        """Bytes of the distinct live saved storages (read before backward, which frees them)."""
        gc.collect()  # packed outputs of dead branches form cycles (tensor -> grad_fn -> saved tensor)
        exclude = {storage_key(p) for p in self.model.parameters()}
        live = [t for ref in self.saved if (t := ref()) is not None]
        sizes = {storage_key(t): storage_bytes(t) for t in live}
        return sum(n for key, n in sizes.items() if key not in exclude)

    def add(self, tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
            self.saved.append(weakref.ref(tensor))

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor

    def _layer_inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):
            self.add(value)

    def __enter__(self) -> SavedBytes:
        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._stack.enter_context(hooks)
        for layer in self.layers:
            handle = layer.register_forward_pre_hook(self._layer_inputs, with_kwargs=True)
            self._stack.callback(handle.remove)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()


class _FusedAttention(torch.autograd.Function):
    """``sdpa`` whose saved tensors are those of a fused kernel; backward recomputes it."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, kwargs: dict) -> Any:
        with torch.no_grad():
            out = _ORIGINAL["sdpa"](q, k, v, attn_mask=mask, **kwargs)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # what flash / efficient kernels keep
        ctx.kwargs, ctx.has_mask = kwargs, mask is not None
        ctx.save_for_backward(q, k, v, out, lse, *([mask] if mask is not None else []))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        q, k, v, _, _, *mask = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
            out = _ORIGINAL["sdpa"](*inputs, attn_mask=mask[0] if mask else None, **ctx.kwargs)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad)) if wanted else iter(())
        return (*(next(grads) if t.requires_grad else None for t in inputs), None, None)


_ORIGINAL: dict[str, Any] = {}


def _fused_sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (query, key, value)):
        return _ORIGINAL["sdpa"](query, key, value, attn_mask=attn_mask, **kwargs)
    return _FusedAttention.apply(query, key, value, attn_mask, kwargs)


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """``torch.nn.functional.scaled_dot_product_attention`` saving what a fused kernel saves."""
    functional = torch.nn.functional
    _ORIGINAL.setdefault("sdpa", functional.scaled_dot_product_attention)
    functional.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = _ORIGINAL["sdpa"]


CHECK_ENV = "TRANSFORMERS_DISABLE_TORCH_CHECK"


@contextlib.contextmanager
def meta_friendly() -> Iterator[None]:
    """transformers' value reads and value checks off (they cannot run on ``meta``), inside the block."""
    import transformers.masking_utils as masking_utils

    original = masking_utils.find_packed_sequence_indices, masking_utils._ignore_causal_mask_sdpa
    previous = os.environ.get(CHECK_ENV)
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    masking_utils._ignore_causal_mask_sdpa = lambda *args, **kwargs: False  # always build the mask
    os.environ[CHECK_ENV] = "1"
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices, masking_utils._ignore_causal_mask_sdpa = original
        if previous is None:
            os.environ.pop(CHECK_ENV, None)
        else:
            os.environ[CHECK_ENV] = previous
