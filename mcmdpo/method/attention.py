"""Tree attention for the shared log-prob engine: SDPA + a boolean mask, or FlexAttention + a BlockMask.

The shared engine packs the conditions of a sample as a prefix tree into one row (see
:mod:`mcmdpo.method.logprobs`): each answer sees the system prefix, its image, its context and itself; a pad
token sees only itself. Two ways to run that attention:

- ``sdpa``: a dense ``[B, 1, L, L]`` boolean mask through transformers' SDPA attention. Runs anywhere,
  but an arbitrary mask rules out the flash kernels and every masked block is still computed.
- ``flex``: ``torch.nn.attention.flex_attention`` with a ``BlockMask`` built here from the tree: the
  row is cut into 128 x 128 tiles; empty tiles (e.g. an answer under image m_l against image m_w's
  tokens) are skipped, full tiles run without a mask, and only partial tiles evaluate the mask
  function. The mask function reads two small tables: the segment of every token and, per row, which
  segment may see which.

``auto`` picks ``flex`` when the hidden states live on a CUDA device and the model's text attention
is SDPA, ``sdpa`` otherwise (CPU: FlexAttention has no backward there).

transformers' attention interface (``AttentionInterface.register``, the documented way to plug in an
attention function) gets one extra implementation, ``mcmdpo_tree``: a ``BlockMask`` goes to
transformers' own ``flex_attention`` function, anything else to its ``sdpa`` function; the mask
interface registers SDPA's mask builder under the same name, so 2-D padding masks (naive engine,
generation) are built exactly as for ``sdpa``. :func:`enable_tree_attention` switches the text model
of a LLaVA-NeXT to it (``set_attn_implementation``); the switch is permanent for the model object
(gradient checkpointing re-runs the forward during backward, after any context manager would have
exited) and changes nothing for inputs without a ``BlockMask``. The name is not written into saved
configs (transformers drops ``_attn_implementation`` from ``config.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask
    from transformers import PreTrainedModel

TreeAttention = Literal["auto", "sdpa", "flex"]
ATTENTIONS: tuple[str, ...] = ("auto", "sdpa", "flex")
TREE_IMPLEMENTATION = "mcmdpo_tree"


@dataclass
class TreeRow:
    """One sample's prefix tree flattened into a row (host-side lists, built before any tensor)."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # segment id of every token
    parents: list[int] = field(default_factory=list)  # parent segment of every segment (-1: root)
    images: list[tuple[torch.Tensor, tuple[int, int]]] = field(default_factory=list)
    # (condition index, row indices whose outputs predict the answer tokens, answer token ids)
    answers: list[tuple[int, list[int], list[int]]] = field(default_factory=list)

    def add_segment(self, ids: Sequence[int], parent: int) -> int:
        """Append a segment that continues ``parent``; returns its id."""
        start = self.end_position(parent)
        seg = len(self.parents)
        self.parents.append(parent)
        self.ids.extend(ids)
        self.positions.extend(range(start, start + len(ids)))
        self.segments.extend([seg] * len(ids))
        return seg

    def end_position(self, seg: int) -> int:
        """Position after the last token of segment ``seg`` (0 for no segment)."""
        return 0 if seg < 0 else self.positions[self.last_index(seg)] + 1

    def last_index(self, seg: int) -> int:
        """Row index of the last token of segment ``seg``."""
        return len(self.segments) - 1 - self.segments[::-1].index(seg)

    def ancestors(self) -> torch.Tensor:
        """``[S, S]`` bool: ``out[s, t]`` iff segment ``t`` is ``s`` or one of its ancestors."""
        n = len(self.parents)
        out = torch.eye(n, dtype=torch.bool)
        for s in range(n):
            p = self.parents[s]
            while p >= 0:
                out[s, p] = True
                p = self.parents[p]
        return out


BLOCK = 128  # FlexAttention's default sparse block size (query and key tiles)


def flex_available() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (2.5 and later)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask  # noqa: F401
    except ImportError:
        return False
    return True


def text_attention(model: PreTrainedModel) -> str | None:
    """The attention implementation of the (text) language model of ``model``."""
    config = getattr(model.config, "text_config", model.config)
    return config._attn_implementation


def resolve_attention(attention: str, model: PreTrainedModel, device: torch.device) -> str:
    """``auto`` -> ``flex`` on CUDA for an SDPA model (when torch has FlexAttention), else ``sdpa``."""
    if attention not in ATTENTIONS:
        raise ValueError(f"tree attention must be one of {ATTENTIONS} (got {attention!r})")
    if attention != "auto":
        return attention
    usable = text_attention(model) in ("sdpa", TREE_IMPLEMENTATION) and flex_available()
    return "flex" if device.type == "cuda" and usable else "sdpa"


def enable_tree_attention(model: PreTrainedModel) -> None:
    """Let the text model of ``model`` take BlockMasks (idempotent; see the module docstring)."""
    current = text_attention(model)
    if current == TREE_IMPLEMENTATION:
        return
    if current != "sdpa":
        raise ValueError(
            f"flex tree attention needs a model loaded with attn_implementation='sdpa' (got {current!r}); "
            "use attention='sdpa' for this model"
        )
    register_tree_attention()
    model.set_attn_implementation({"text_config": TREE_IMPLEMENTATION})


def register_tree_attention() -> None:
    """Register ``mcmdpo_tree`` with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TREE_IMPLEMENTATION, tree_attention_forward)
    AttentionMaskInterface.register(TREE_IMPLEMENTATION, sdpa_mask)


def tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | BlockMask | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers attention function: FlexAttention for a ``BlockMask``, SDPA for anything else."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, BlockMask):
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


# ------------------------------------------------------------------------------------------ block mask


def padded_width(width: int, block: int = BLOCK) -> int:
    """``width`` rounded up to whole blocks (the tables cover every index a kernel tile can touch)."""
    return -(-width // block) * block


def tree_tables(rows: Sequence[TreeRow], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``segments [B, W]`` (segment of every position, ``W`` = ``width`` in whole blocks) and
    ``visible [B, S + 1, S + 1]`` (``visible[b, s, t]``: segment ``s`` may see segment ``t``).

    Positions past a row's tokens (padding, and the tail of the last block) belong to segment ``S``
    (one more than the most segments of any row), which sees nothing and is seen by nobody: the
    mask function lets such a position see only itself.
    """
    pad = max(len(row.parents) for row in rows)
    segments = torch.full((len(rows), padded_width(width)), pad, dtype=torch.long)
    visible = torch.zeros((len(rows), pad + 1, pad + 1), dtype=torch.bool)
    for b, row in enumerate(rows):
        n = len(row.parents)
        segments[b, : len(row.segments)] = torch.tensor(row.segments)
        visible[b, :n, :n] = row.ancestors()
    return segments, visible


def tree_mask_mod(segments: torch.Tensor, visible: torch.Tensor) -> Callable[..., torch.Tensor]:
    """FlexAttention ``mask_mod``: query ``q`` sees key ``k`` iff ``k``'s segment is ``q``'s or one of
    its ancestors, and ``k <= q`` inside one segment; a position always sees itself (pad rows)."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        seg_q, seg_k = segments[b, q], segments[b, k]
        return (q == k) | (visible[b, seg_q, seg_k] & ((seg_q != seg_k) | (k <= q)))

    return mask_mod


def dense_tree_mask(segments: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``[B, W, W]`` bool: :func:`tree_mask_mod` evaluated over the whole (block-padded) grid."""
    mask_mod = tree_mask_mod(segments, visible)
    width = segments.shape[1]
    q, k = torch.arange(width)[:, None], torch.arange(width)[None, :]
    return torch.stack([mask_mod(torch.tensor(b), torch.tensor(0), q, k) for b in range(len(segments))])


def tree_block_mask(rows: Sequence[TreeRow], width: int, device: torch.device | str) -> BlockMask:
    """The ``BlockMask`` of ``rows`` packed to ``width`` tokens, on ``device``.

    Tiles are classified on the host from the dense mask of one row at a time (``W^2`` booleans, a
    few MB): empty tiles are skipped, full tiles need no mask function, partial ones evaluate
    :func:`tree_mask_mod` on the device tables.
    """
    from torch.nn.attention.flex_attention import BlockMask

    segments, visible = tree_tables(rows, width)
    blocks = segments.shape[1] // BLOCK
    any_, all_ = [], []
    for b in range(len(rows)):
        tiles = dense_tree_mask(segments[b : b + 1], visible[b : b + 1])[0]
        tiles = tiles.view(blocks, BLOCK, blocks, BLOCK)
        any_.append(tiles.any(dim=(1, 3)))
        all_.append(tiles.all(dim=(1, 3)))
    full = torch.stack(all_)[:, None]  # [B, 1, q blocks, kv blocks]
    partial = torch.stack(any_)[:, None] & ~full
    num, idx = _block_lists(partial)
    full_num, full_idx = _block_lists(full)
    return BlockMask.from_kv_blocks(
        num.to(device),
        idx.to(device),
        full_num.to(device),
        full_idx.to(device),
        BLOCK_SIZE=BLOCK,
        mask_mod=tree_mask_mod(segments.to(device), visible.to(device)),
        seq_lengths=(width, width),
    )


def _block_lists(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, head, query block): how many key blocks are selected, and their indices first."""
    count = selected.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return count, order
