"""Where the ranks of a multi-task job meet: MASTER_ADDR / MASTER_PORT for torch.distributed.

submitit derives both from the job (:class:`submitit.helpers.TorchDistributedEnvironment`):
MASTER_ADDR is the first host of ``SLURM_JOB_NODELIST`` (the node of rank 0), MASTER_PORT a port
drawn from the job id (the same after a requeue; an inherited MASTER_PORT wins). On one node any
address works. Across nodes MASTER_ADDR must resolve, on every node, to an address the other nodes
can reach: a name that resolves to loopback there (Debian's ``127.0.1.1 <hostname>`` line in
``/etc/hosts``) would leave the ranks of the other nodes waiting for torch's 30-minute rendezvous
timeout. :func:`export_rendezvous` checks that before any process group exists and fails at once,
naming the host and the fix.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

import submitit

from mcmdpo.batch.errors import McmdpoError

log = logging.getLogger(__name__)


class RendezvousError(McmdpoError, RuntimeError):
    """The ranks of a multi-node job could not meet (an unresolvable or loopback MASTER_ADDR)."""


@dataclass(frozen=True)
class Rendezvous:
    """The exported rendezvous of one task, as recorded in its start event."""

    master_addr: str
    master_port: int
    master_ip: str
    nodes: int

    def describe(self) -> str:
        return f"{self.master_addr}:{self.master_port} ({self.master_ip}, {self.nodes} node(s))"


def export_rendezvous() -> Rendezvous:
    """Export RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (replacing
    whatever the environment carries), then check that this node can reach the master."""
    dist_env = submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    job = submitit.JobEnvironment()
    nodes = max(1, int(job.num_nodes))
    master_ip = resolve(dist_env.master_addr)
    check_reachable(dist_env.master_addr, master_ip, nodes > 1, int(job.node) == 0, socket.gethostname())
    found = Rendezvous(dist_env.master_addr, int(dist_env.master_port), master_ip or "?", nodes)
    if nodes > 1:
        here = socket.gethostname()
        log.info("rank %s on %s: rendezvous at %s", os.environ["RANK"], here, found.describe())
    return found


def resolve(host: str) -> str | None:
    """The IPv4 address ``host`` resolves to here (as the TCPStore client connects), or None."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def check_reachable(master: str, ip: str | None, multi_node: bool, on_master_node: bool, here: str) -> None:
    """Raise :class:`RendezvousError` when ranks on other nodes could not reach ``master``."""
    if not multi_node:
        return
    if ip is None:
        raise RendezvousError(
            f"MASTER_ADDR={master} (the job's first node) does not resolve on {here}: the nodes' "
            "host names must resolve on every node (DNS or /etc/hosts)"
        )
    if ipaddress.ip_address(ip).is_loopback and not on_master_node:
        raise RendezvousError(
            f"MASTER_ADDR={master} resolves to {ip} (loopback) on {here}, so this rank cannot reach rank "
            f"0 on {master}: fix /etc/hosts or DNS on the nodes (a '127.0.1.1 <hostname>' line?)"
        )
