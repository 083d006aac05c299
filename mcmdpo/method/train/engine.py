"""torch.distributed and DeepSpeed: the process group, the DeepSpeed config, AdamW, the LR schedule.

The optimizer is always a torch ``AdamW`` handed to ``deepspeed.initialize`` (with
``zero_allow_untested_optimizer``): DeepSpeed's fused/CPU Adam kernels do not resume bit-exactly.
The LR schedule is a ``LambdaLR`` from ``transformers.get_scheduler`` (the HF Trainer's formulas),
stepped by DeepSpeed once per optimizer step and saved in its checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import socket
from typing import TYPE_CHECKING, Any

import torch

from mcmdpo.batch.rendezvous import RendezvousError
from mcmdpo.method.train.spec import BatchLayout, TrainSpec

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def setup_distributed(world_size: int) -> tuple[int, int, int]:
    """Initialise the process group; return (rank, local rank, world size).

    ``world_size`` is the job's task count (``ctx.world_size``). With several tasks the runtime has
    exported RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and LOCAL_RANK; a single task gets a fresh
    one-process group on a free port (whatever stale variables the environment carries). gloo on
    CPU, nccl on GPUs. Idempotent within a process.
    """
    import torch.distributed as dist

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
    import deepspeed

    if not dist.is_initialized():
        if world_size == 1:
            _single_process_env()
        local_rank = int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "gloo" and spans_nodes():
            check_gloo_address()
        _forget_deepspeed_groups()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    else:  # an earlier task of this process (debug executor) made the group; its variables may be gone
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(key, value)
    return dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()


def spans_nodes() -> bool:
    """The process group has ranks on other nodes (fewer local ranks than ranks)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("LOCAL_WORLD_SIZE", world)) < world


def check_gloo_address() -> None:
    """gloo tells its peers the address this host's name resolves to, unless GLOO_SOCKET_IFNAME
    names an interface; across nodes a loopback address there cannot be reached (Debian maps the
    host name to 127.0.1.1), and the peers would wait in the rendezvous until its timeout."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError:
        address = None
    if address is None or address.startswith("127."):
        raise RendezvousError(
            f"{host} resolves to {address or 'nothing'}: gloo would offer the other nodes an address "
            "they cannot reach. Map the host name to the node's network address (/etc/hosts, DNS), or "
            "set GLOO_SOCKET_IFNAME=<interface> (e.g. in the job environment)"
        )


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches clones of the world group in module globals; after an earlier group of this
    process was destroyed (in-process tasks, tests) they are stale and its broadcast fails with
    "Group ... is not registered". A new group starts with empty caches."""
    from deepspeed.utils import groups

    groups._WORLD_GROUP = None
    groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_DATA_PARALLEL_GROUP", "_ALL_TO_ALL_GROUP"):
        getattr(groups, name).clear()


def _single_process_env() -> None:
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_everything(seed: int, rank: int) -> None:
    """Seed python, numpy and torch (per rank) so that a run never depends on earlier RNG use."""
    import random

    import numpy as np

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def ds_config(spec: TrainSpec, layout: BatchLayout) -> dict[str, Any]:
    """The recipe's ``deepspeed`` table plus the keys the recipe fields own."""
    config = copy.deepcopy(spec.deepspeed)
    config.update(
        train_batch_size=layout.global_batch,
        train_micro_batch_size_per_gpu=layout.micro,
        gradient_accumulation_steps=layout.accum,
        gradient_clipping=spec.max_grad_norm,
        bf16={"enabled": spec.precision == "bf16"},
    )
    config.setdefault("zero_allow_untested_optimizer", True)
    config.setdefault("zero_force_ds_cpu_optimizer", False)  # keep torch AdamW even with CPU offload
    config.setdefault("steps_per_print", 2**31 - 1)  # our own metrics log replaces DeepSpeed's prints
    config.setdefault("wall_clock_breakdown", False)
    return config


def param_groups(model: torch.nn.Module, spec: TrainSpec) -> list[dict[str, Any]]:
    """Trainable parameters in up to four groups: (vision tower or not) x (decayed or not).

    Biases and norm weights (tensors with fewer than two dimensions) get no weight decay.
    """
    tower = {id(p) for p in model.model.vision_tower.parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            key = (id(param) in tower and spec.vision_tower_lr is not None, param.ndim >= 2)
            groups.setdefault(key, []).append(param)
    out = []
    for (in_tower, decayed), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "weight_decay": spec.weight_decay if decayed else 0.0}
        if in_tower:
            group["lr"] = spec.vision_tower_lr
        out.append(group)
    return out


def build_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """torch AdamW (non-fused, non-foreach: the same arithmetic on every backend and on resume)."""
    return torch.optim.AdamW(
        param_groups(model, spec),
        lr=spec.lr,
        betas=spec.adam_betas,
        eps=spec.adam_epsilon,
        foreach=False,
        fused=False,
    )


def warmup_steps(spec: TrainSpec, total_steps: int) -> int:
    return math.ceil(spec.warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainSpec, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_scheduler

    return get_scheduler(
        SCHEDULES[spec.schedule],
        optimizer,
        num_warmup_steps=warmup_steps(spec, total_steps),
        num_training_steps=total_steps,
    )


def build_engine(
    model: torch.nn.Module, spec: TrainSpec, layout: BatchLayout, total_steps: int
) -> DeepSpeedEngine:
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    import deepspeed

    optimizer = build_optimizer(model, spec)
    scheduler = build_scheduler(optimizer, spec, total_steps)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config(spec, layout),
        dist_init_required=False,
    )
    return engine
