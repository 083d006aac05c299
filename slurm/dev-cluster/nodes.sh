# Multi-node mode of the dev cluster (sourced by start.sh and stop.sh, not run).
#
# Each node is a network namespace `mcmdpo-<node>` with its own address on a private bridge, and
# its slurmd runs there in its own UTS namespace (host name = node name) and mount namespace (an
# /etc/hosts naming the controller and every node, bind-mounted from $SLURM_DIR/hosts), pinned to
# one CPU with taskset; its jobs inherit all of that. The controller side (slurmctld, slurmdbd,
# MariaDB, munged) stays in the host's namespaces; the file system, /run/munge included, is shared.
# (`ip netns exec` is not used: it remounts /sys, and slurmd 22.05 then fails with "No filesystem
# mounted on /sys/fs/cgroup" / "Unable to initialize cgroup plugin" even with task/none.)
#
#   host namespace                     mcmdpo-node1 (hostname node1)   mcmdpo-node2 (node2) ...
#   bridge mcmdpo-br0 10.213.0.1/24 -- veth mcmdpo-v1 <-> eth0 10.213.0.2
#                                    -- veth mcmdpo-v2 <-> eth0 10.213.0.3  ...
#
# Nothing is routed or NATed: traffic stays between these namespaces and the host (the namespaces
# have no default route; the host has an `unreachable` route for the /24 under the bridge's).

BRIDGE=mcmdpo-br0
NET_PREFIX=${SLURM_DEV_NET:-10.213.0} # a private /24 that exists only inside this machine

node_name() { echo "node$1"; }             # node K (1-based) -> Slurm NodeName / hostname
node_ns() { echo "mcmdpo-$(node_name "$1")"; }
node_addr() { echo "$NET_PREFIX.$(($1 + 1))"; }
ctl_addr() { echo "$NET_PREFIX.1"; }

# nodes_hosts N: the /etc/hosts every node namespace sees (the controller and every node)
nodes_hosts() {
    local k
    printf '127.0.0.1 localhost\n%s %s\n' "$(ctl_addr)" "$(hostname -s)"
    for ((k = 1; k <= $1; k++)); do printf '%s %s\n' "$(node_addr "$k")" "$(node_name "$k")"; done
}

# net_up N HOSTS: the bridge, N namespaces with a veth each, the nodes' hosts file HOSTS
# (-> NET_NAMESPACES). Every step is checked (callers use `net_up || die`, where `set -e` does not
# apply).
net_up() {
    local n=$1 hosts=$2 k ns veth
    NET_NAMESPACES=()
    # a fallback for the /24 (the bridge's own route wins while it exists): no packet for a node
    # address ever takes the default route off this machine
    ip route replace unreachable "$NET_PREFIX.0/24" metric 4096 || return 1
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || return 1
    fi
    ip addr replace "$(ctl_addr)/24" dev "$BRIDGE" && ip link set "$BRIDGE" up || return 1
    for ((k = 1; k <= n; k++)); do
        ns=$(node_ns "$k") veth=mcmdpo-v$k
        if ! ip netns list | grep -qw "^$ns"; then ip netns add "$ns" || return 1; fi
        NET_NAMESPACES+=("$ns")
        if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
            ip link del "$veth" 2>/dev/null || true
            ip link add "$veth" type veth peer name eth0 netns "$ns" || return 1
        fi
        ip link set "$veth" master "$BRIDGE" up &&
            ip -n "$ns" addr replace "$(node_addr "$k")/24" dev eth0 &&
            ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up || return 1
    done
    nodes_hosts "$n" >"$hosts"
}

# spawn_node K HOSTS LOGFILE: slurmd for node K in its namespaces, with its host name and the
# nodes' hosts file, on one CPU
spawn_node() {
    local k=$1 hosts=$2 logf=$3 cpu
    cpu=$(((k - 1) % $(nproc)))
    nsenter --net="/run/netns/$(node_ns "$k")" unshare --uts --mount --propagation private \
        taskset -c "$cpu" sh -c 'mount --bind "$2" /etc/hosts && hostname "$1" && exec slurmd -N "$1"' \
        sh "$(node_name "$k")" "$hosts" </dev/null >>"$logf" 2>&1 3>&- 9>&-
}

# net_down NAMESPACE...: kill what still runs in each namespace (job leftovers), delete it and its
# veth; then the bridge and the fallback route
net_down() {
    local ns pid
    for ns in "$@"; do
        if ip netns list | grep -qw "^$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                log "killing pid $pid left in $ns ($(cat "/proc/$pid/comm" 2>/dev/null))"
                kill -KILL "$pid" 2>/dev/null || true
            done
            ip netns del "$ns"
        fi
        ip link del "mcmdpo-v${ns#mcmdpo-node}" 2>/dev/null || true
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
    ip route del unreachable "$NET_PREFIX.0/24" metric 4096 2>/dev/null || true
}
