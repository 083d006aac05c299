#!/usr/bin/env bash
# Start (or reuse) a SLURM development cluster: munged, MariaDB, slurmdbd, slurmctld and one
# slurmd (this host), or with --nodes N (N >= 2) N slurmd nodes, each in its own network namespace.
# See README.md in this directory.
#
#   eval "$(slurm/dev-cluster/start.sh | tail -1 | sed 's/^/export /')"
#   # or: slurm/dev-cluster/start.sh >/dev/null && . "${SLURM_DIR:-/tmp/mcmdpo-slurm}/env.sh"
#   slurm/dev-cluster/start.sh --nodes 2     # node1, node2 (1 CPU each) in /tmp/mcmdpo-slurm-multi
#
# All progress goes to stderr; the only stdout line is the final `SLURM_CONF=<path>`.
# Environment:
#   SLURM_DIR            state directory (default /tmp/mcmdpo-slurm; with --nodes N>1: /tmp/mcmdpo-slurm-multi)
#   SLURM_DEV_NODES      the same as --nodes (default 1)
#   SLURM_DEV_WAIT_S     seconds to wait for each daemon before failing (default 60)
#   SLURM_DEV_DB_PORT    TCP port of the cluster's private MariaDB on 127.0.0.1 (default 3307; multi: 3308)
#   SLURM_DEV_NET        first three octets of the nodes' private /24 (multi-node; default 10.213.0)
set -euo pipefail

exec 3>&1 1>&2 # keep the real stdout on fd 3 for the final line; everything else -> stderr

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
NODES=${SLURM_DEV_NODES:-1}
while (($#)); do
    case $1 in
    --nodes) NODES=${2:-}; shift; shift || true ;;
    --nodes=*) NODES=${1#*=}; shift ;;
    *) echo "usage: $0 [--nodes N]" >&2; exit 2 ;;
    esac
done
[[ $NODES =~ ^[1-9][0-9]?$ ]] || { echo "--nodes: expected 1-99, got '$NODES'" >&2; exit 2; }
# The multi-node cluster has its own ports, database and state dir, so it can run next to the
# single-node one (the tests use both).
if ((NODES > 1)); then
    DEFAULT_DIR=/tmp/mcmdpo-slurm-multi DEFAULT_DB_PORT=3308 CTLD_PORT=6827 DBD_PORT=6829
else
    DEFAULT_DIR=/tmp/mcmdpo-slurm DEFAULT_DB_PORT=3307 CTLD_PORT=6817 DBD_PORT=6819
fi
mkdir -p "${SLURM_DIR:-$DEFAULT_DIR}"
D=$(cd "${SLURM_DIR:-$DEFAULT_DIR}" && pwd -P)
WAIT_S=${SLURM_DEV_WAIT_S:-60}
DB_PORT=${SLURM_DEV_DB_PORT:-$DEFAULT_DB_PORT}
H=$(hostname -s)
export SLURM_DIR=$D SLURM_CONF=$D/slurm.conf
unset SLURM_JOB_ID SLURM_JOBID # a caller inside a job must not leak job context into the daemons
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core)

# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=nodes.sh
. "$HERE/nodes.sh"
if ((NODES > 1)); then
    NODE_LIST=()
    for ((k = 1; k <= NODES; k++)); do NODE_LIST+=("$(node_name "$k")"); done
else
    NODE_LIST=("$H")
fi
# slurmd_pidfile NODE: where that node's slurmd writes its pid (SlurmdPidFile, %n = the node)
slurmd_pidfile() { if ((NODES > 1)); then echo "$D/slurmd-$1.pid"; else echo "$D/slurmd.pid"; fi; }
die() {
    log "ERROR: $1"
    shift
    local f
    for f in "$@"; do
        [[ -s $f ]] && { log "--- last lines of $f:"; tail -n 25 "$f" >&2; }
    done
    exit 1
}

# proc_conf PID: the SLURM_CONF a process was started with (empty if unset or gone)
proc_conf() {
    { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | sed -n 's/^SLURM_CONF=//p' | head -n1 || true
}

# conf_port CONF: the SlurmctldPort of a slurm.conf (Slurm's default 6817; unset = the system's)
conf_port() {
    local p
    p=$(sed -n 's/^SlurmctldPort=//p' "${1:-/etc/slurm/slurm.conf}" 2>/dev/null | head -n1 || true)
    echo "${p:-6817}"
}

# wait_for DESCRIPTION LOGFILE COMMAND...: poll COMMAND (quietly) for up to WAIT_S seconds
wait_for() {
    local what=$1 logf=$2 t0=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - t0 < WAIT_S)) || die "$what not ready after ${WAIT_S}s" "$logf"
        sleep 0.2
    done
}

# spawn LOGFILE COMMAND...: run a daemon with no inherited stdio/lock fds (so `start.sh | tail`
# and the lock are released when this script exits)
spawn() {
    local logf=$1
    shift
    "$@" </dev/null >>"$logf" 2>&1 3>&- 9>&-
}

# (pgrep first: the munge client retries for ~2 s when no munged is listening)
munge_ok() { pgrep -x munged >/dev/null && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
db() { mariadb --no-defaults --protocol=socket --socket="$D/run/mysqld.sock" -u root "$@"; }
node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1; }
node_usable() { [[ $(node_state "$1") =~ ^(idle|mixed|allocated|completing)$ ]]; }
nodes_usable() {
    local n
    for n in "${NODE_LIST[@]}"; do node_usable "$n" || return 1; done
}
slurmds_alive() {
    local n
    for n in "${NODE_LIST[@]}"; do alive "$(slurmd_pidfile "$n")" slurmd || return 1; done
}
# same_nodes: the cluster in $D was started with this node list (another --nodes needs a restart);
# a single-node cluster from before $D/nodes existed counts as the same
same_nodes() { [[ $(cat "$D/nodes" 2>/dev/null || echo "$H") == "${NODE_LIST[*]}" ]]; }
# resume_down: nodes that are down/drained (e.g. "Kill task failed") -> RESUME; true if any was
resume_down() {
    local n found=1
    for n in "${NODE_LIST[@]}"; do
        if [[ $(node_state "$n") =~ ^(down|drain|fail) ]]; then
            log "node $n is $(node_state "$n") ($(sinfo -h -N -n "$n" -o %E | head -n1)): resuming it"
            scontrol update NodeName="$n" State=RESUME || true
            found=0
        fi
    done
    return $found
}
nodes_summary() {
    local n out=()
    for n in "${NODE_LIST[@]}"; do out+=("node $n: $(node_state "$n")"); done
    local IFS=,
    echo "${out[*]}"
}

healthy() {
    alive "$D/mariadb.pid" mariadbd && alive "$D/slurmdbd.pid" slurmdbd &&
        alive "$D/slurmctld.pid" slurmctld && slurmds_alive && same_nodes &&
        munge_ok && db -e 'select 1' && nodes_usable && sacct -n -X -S now -E now -o JobID
}

print_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$D/env.sh.tmp"
    mv -f "$D/env.sh.tmp" "$D/env.sh"
    printf 'SLURM_CONF=%s\n' "$SLURM_CONF" >&3
}

# --- packages (before taking the lock: apt has its own) --------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    mkdir -p "$D/log"
    log "installing ${missing[*]} (log: $D/log/apt.log)"
    policy_tmp=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then # keep postinst scripts from starting system services
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        policy_tmp=1
    fi
    rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } >"$D/log/apt.log" 2>&1 </dev/null || rc=$?
    [[ -n $policy_tmp ]] && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "package installation failed (rc=$rc)" "$D/log/apt.log"
fi

# --- one start.sh / stop.sh at a time per state dir ---------------------------------------------
exec 9>"$D/.lock"
flock -w 300 9 || die "could not lock $D/.lock (another start.sh/stop.sh is stuck?)"

# --- another cluster (other SLURM_DIR / system Slurm) on this machine? --------------------------
# One cluster per set of ports: the single-node cluster uses 6817-6819, the multi-node one
# 6827/6829 (its slurmds listen on 6818 inside their own namespaces), so the two can run side by
# side.  Refuse a clash rather than silently hand back a different cluster's SLURM_CONF.
foreign=()
for name in slurmctld slurmd slurmdbd; do
    for pid in $(pgrep -x "$name" || true); do
        running "$pid" "$name" || continue
        conf=$(proc_conf "$pid")
        [[ $conf == "$SLURM_CONF" ]] && continue
        [[ $(conf_port "$conf") == "$CTLD_PORT" ]] || continue # a cluster on other ports: fine
        foreign+=("$name pid $pid SLURM_CONF=${conf:-<unset: /etc/slurm/slurm.conf>}")
    done
done
if ((${#foreign[@]})); then
    log "ERROR: another Slurm cluster is already running on this machine (port $CTLD_PORT):"
    printf '  %s\n' "${foreign[@]}" >&2
    other=$(printf '%s\n' "${foreign[@]}" | sed -n 's/.*SLURM_CONF=\(\/.*\)\/slurm\.conf$/\1/p' | head -n1)
    log "use that cluster (SLURM_DIR=${other:-<its dir>}) or stop it first:"
    log "  SLURM_DIR=${other:-<its dir>} $HERE/stop.sh"
    exit 1
fi

# --- already up? ---------------------------------------------------------------------------------
# daemons fine but a node down/drained (e.g. "Kill task failed"): resume it rather than restart
# everything (a restart would cancel all jobs)
if [[ -s $SLURM_CONF ]] && same_nodes && alive "$D/slurmctld.pid" slurmctld && slurmds_alive &&
    resume_down; then
    for _ in $(seq 20); do nodes_usable && break || sleep 0.5; done
fi
if [[ -s $SLURM_CONF ]] && healthy >/dev/null 2>&1; then
    log "cluster in $D is already up ($(nodes_summary))"
    print_env
    exit 0
fi

# --- anything half-alive or stale from this dir (dead pids, lost pid files): stop it cleanly ----
if [[ -e $SLURM_CONF ]]; then
    log "cluster in $D is not (fully) up: stopping whatever is left, then starting cleanly"
    SLURM_DEV_LOCK_HELD=1 "$HERE/stop.sh"
fi

mkdir -p "$D/state" "$D/spool" "$D/log" "$D/run"
if ((NODES > 1)); then
    log "starting cluster in $D (nodes ${NODE_LIST[*]}, 1 CPU each, in network namespaces)"
else
    log "starting cluster in $D (node $H, $(nproc) CPUs)"
fi

# --- configuration -------------------------------------------------------------------------------
MEM=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024))
# write_if_changed FILE: stdin -> FILE, keeping the file (and mtime) when the content is the same
write_if_changed() {
    local tmp=$1.tmp
    cat >"$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}
# multi_node_conf: slurm.conf of the multi-node cluster.  slurmctld listens on the bridge address
# (the nodes reach it there); every slurmd has its own pid/log/spool file (%n = node name).
multi_node_conf() {
    local k mem=$((MEM / NODES))
    cat <<EOF
ClusterName=mcmdpo_multi
SlurmctldHost=$H($(ctl_addr))
SlurmctldPort=$CTLD_PORT
SlurmdPort=6818
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MailProg=/bin/true
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=5,bf_interval=5
SlurmctldParameters=preempt_send_user_signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
KillWait=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStoragePort=$DBD_PORT
EOF
    for ((k = 1; k <= NODES; k++)); do
        echo "NodeName=$(node_name "$k") NodeAddr=$(node_addr "$k") NodeHostname=$(node_name "$k") CPUs=1 RealMemory=$mem State=UNKNOWN"
    done
    cat <<EOF
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

# start_nodes: one slurmd in each node's namespace
start_nodes() {
    local k
    for ((k = 1; k <= NODES; k++)); do
        mkdir -p "$D/spool/$(node_name "$k")"
        spawn_node "$k" "$D/hosts" "$D/log/slurmd-$(node_name "$k").out" ||
            die "slurmd of $(node_name "$k") failed to start" "$D/log/slurmd-$(node_name "$k").out" \
                "$D/log/slurmd-$(node_name "$k").log"
    done
}

# slurmdbd.conf / slurm.conf: one key=value per line (slurmdbd rejects several per line)
{
    cat <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$D/log/slurmdbd.log
PidFile=$D/slurmdbd.pid
EOF
    if ((NODES > 1)); then echo "DbdPort=$DBD_PORT"; fi
} | write_if_changed "$D/slurmdbd.conf"
chmod 600 "$D/slurmdbd.conf"
if ((NODES > 1)); then
    multi_node_conf | write_if_changed "$SLURM_CONF"
else
    write_if_changed "$SLURM_CONF" <<EOF
ClusterName=mcmdpo
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MailProg=/bin/true
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=5,bf_interval=5
SlurmctldParameters=preempt_send_user_signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
KillWait=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
NodeName=$H NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
fi

# --- the nodes' network (multi-node), before any daemon that knows their addresses -------------
# (without the bridge, slurmctld's pings to 10.213.0.x would follow the default route off this
# machine; net_up also adds an `unreachable` route for the /24 that outlives the bridge)
if ((NODES > 1)); then
    net_up "$NODES" "$D/hosts" || die "could not set up the nodes' network namespaces (needs root and CAP_NET_ADMIN)"
    printf '%s\n' "${NET_NAMESPACES[@]}" >"$D/netns"
    log "network up: bridge $BRIDGE $(ctl_addr)/24, namespaces ${NET_NAMESPACES[*]}"
fi

# --- munge (machine-wide; reused if already running) ---------------------------------------------
if munge_ok; then
    log "munged already running: reusing it"
else
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        runuser -u munge -- mungekey --create
    fi
    rm -f /run/munge/munged.pid
    spawn "$D/log/munged.out" runuser -u munge -- /usr/sbin/munged --force ||
        die "munged failed to start" "$D/log/munged.out" /var/log/munge/munged.log
    wait_for munged /var/log/munge/munged.log munge_ok
    cp /run/munge/munged.pid "$D/munged.pid" # ours: stop.sh stops it
    log "munged up"
fi

# --- MariaDB (private instance: data in $D/mysql, socket in $D/run, TCP 127.0.0.1:$DB_PORT) ----
if [[ ! -e $D/mysql/.mcmdpo-initialised ]]; then
    log "initialising MariaDB data dir $D/mysql"
    rm -rf "$D/mysql"
    mariadb-install-db --no-defaults --user=root --datadir="$D/mysql" --skip-test-db \
        --auth-root-authentication-method=socket >"$D/log/mariadb-install-db.log" 2>&1 </dev/null ||
        die "mariadb-install-db failed" "$D/log/mariadb-install-db.log"
    touch "$D/mysql/.mcmdpo-initialised"
fi
if ss -Hltn "sport = :$DB_PORT" | grep -q .; then
    die "TCP port $DB_PORT is already in use (another MariaDB?); set SLURM_DEV_DB_PORT"
fi
rm -f "$D/run/mysqld.sock" "$D/run/mysqld.sock.lock"
# (a plain background command, not a function: no subshell may keep fd 3 / fd 9 open)
setsid /usr/sbin/mariadbd --no-defaults --user=root \
    --datadir="$D/mysql" --socket="$D/run/mysqld.sock" --pid-file="$D/mariadb.pid" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    </dev/null >>"$D/log/mariadb.log" 2>&1 3>&- 9>&- &
wait_for MariaDB "$D/log/mariadb.log" db -e 'select 1'
log "MariaDB up (127.0.0.1:$DB_PORT)"
db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
    die "could not create the slurm database user" "$D/log/mariadb.log"

# --- Slurm daemons ---------------------------------------------------------------------------------
spawn "$D/log/slurmdbd.out" slurmdbd || die "slurmdbd failed to start" "$D/log/slurmdbd.out" "$D/log/slurmdbd.log"
wait_for slurmdbd "$D/log/slurmdbd.log" sacctmgr -n list cluster # (sacct: cluster may not be registered yet)
log "slurmdbd up"
spawn "$D/log/slurmctld.out" slurmctld || die "slurmctld failed to start" "$D/log/slurmctld.out" "$D/log/slurmctld.log"
wait_for slurmctld "$D/log/slurmctld.log" scontrol ping
log "slurmctld up"
if ((NODES > 1)); then
    start_nodes
else
    spawn "$D/log/slurmd.out" slurmd || die "slurmd failed to start" "$D/log/slurmd.out" "$D/log/slurmd.log"
fi
printf '%s\n' "${NODE_LIST[*]}" >"$D/nodes"

t0=$SECONDS resumed=
until nodes_usable; do
    if [[ -z $resumed ]] && ((SECONDS - t0 > 5)) && resume_down; then resumed=1; fi
    ((SECONDS - t0 < WAIT_S)) ||
        die "nodes not idle after ${WAIT_S}s ($(nodes_summary))" "$D/log/slurmctld.log" "$D"/log/slurmd*.log
    sleep 0.5
done
healthy >/dev/null 2>&1 || die "cluster started but the health check fails" "$D/log/slurmctld.log" "$D/log/slurmdbd.log"
log "cluster up: $(nodes_summary); partitions: $(sinfo -h -o %P | tr '\n' ' ')"
print_env
