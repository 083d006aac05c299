#!/usr/bin/env bash
# Stop the SLURM development cluster started by start.sh from the same SLURM_DIR.
# Cancels (SIGKILL) all jobs first, then stops the slurmd(s), slurmctld, slurmdbd, MariaDB and
# munged (munged only if start.sh started it and no other cluster still uses it), each from its
# pid file, waiting for it to exit; a multi-node cluster's network namespaces, veths, bridge and
# fallback route are removed.
# Idempotent: nothing running -> exit 0.  State ($SLURM_DIR/state, accounting DB) is kept;
# `rm -rf $SLURM_DIR` after stopping gives a completely fresh cluster.
#   stop.sh [--nodes N]    N > 1: the multi-node cluster's default dir (/tmp/mcmdpo-slurm-multi)
#   SLURM_DIR            state directory (default /tmp/mcmdpo-slurm)
#   SLURM_DEV_STOP_WAIT_S  seconds to wait for each daemon after SIGTERM before SIGKILL (default 30)
set -euo pipefail

NODES=${SLURM_DEV_NODES:-1}
case ${1:-} in
--nodes) NODES=${2:-1} ;;
--nodes=*) NODES=${1#*=} ;;
"") ;;
*) echo "usage: $0 [--nodes N]" >&2; exit 2 ;;
esac
if [[ $NODES =~ ^[0-9]+$ ]] && ((NODES > 1)); then DEFAULT_DIR=/tmp/mcmdpo-slurm-multi; else DEFAULT_DIR=/tmp/mcmdpo-slurm; fi
D=${SLURM_DIR:-$DEFAULT_DIR}
WAIT_S=${SLURM_DEV_STOP_WAIT_S:-30}
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=nodes.sh
. "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"

if [[ ! -d $D ]]; then
    log "$D does not exist: nothing to stop"
    exit 0
fi
D=$(cd "$D" && pwd -P)
export SLURM_CONF=$D/slurm.conf
unset SLURM_JOB_ID SLURM_JOBID

if [[ -z ${SLURM_DEV_LOCK_HELD:-} ]]; then # start.sh calls us with its lock held
    exec 9>"$D/.lock"
    flock -w 300 9 || { log "ERROR: could not lock $D/.lock"; exit 1; }
fi


# stop_pid NAME PID: SIGTERM, wait (bounded), then SIGKILL
stop_pid() {
    local name=$1 pid=$2 t0=$SECONDS
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    while running "$pid" "$name"; do
        if ((SECONDS - t0 >= WAIT_S)); then
            log "$name (pid $pid) still running after ${WAIT_S}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            local t1=$SECONDS
            while running "$pid" "$name" && ((SECONDS - t1 < 10)); do sleep 0.2; done
            running "$pid" "$name" && log "WARNING: $name (pid $pid) did not exit"
            return 0
        fi
        sleep 0.2
    done
}

stopped=0
# 1. jobs: kill running ones, cancel pending/requeued ones, so no job processes outlive slurmd
if alive "$D/slurmctld.pid" slurmctld && jobs=$(squeue -h -o %A 2>/dev/null) && [[ -n $jobs ]]; then
    log "cancelling jobs: $(echo $jobs)"
    running=$(squeue -h -t RUNNING,SUSPENDED -o %A 2>/dev/null || true)
    [[ -n $running ]] && scancel --full --signal=KILL $running 2>/dev/null || true
    scancel $jobs 2>/dev/null || true
    t0=$SECONDS
    while [[ -n $(squeue -h -o %A 2>/dev/null) ]] && ((SECONDS - t0 < 20)); do sleep 0.5; done
    [[ -z $(squeue -h -o %A 2>/dev/null) ]] || log "WARNING: jobs left in the queue: $(squeue -h -o '%A %T' | tr '\n' ' ')"
fi

# other_cluster: prints the SLURM_CONF of another running cluster (it may use the machine-wide
# munged that this cluster started); false if there is none
other_cluster() {
    local comm pid conf
    for comm in slurmctld slurmd slurmdbd; do
        for pid in $(pgrep -x "$comm" || true); do
            running "$pid" "$comm" || continue
            conf=$({ tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | sed -n 's/^SLURM_CONF=//p' | head -n1 || true)
            [[ $conf == "$SLURM_CONF" ]] || { echo "${conf:-/etc/slurm/slurm.conf}"; return 0; }
        done
    done
    return 1
}

# 2. daemons in reverse start order, from their pid files (slurmd-<node>.pid: multi-node)
for file in "$D"/slurmd-*.pid "$D/slurmd.pid" "$D/slurmctld.pid" "$D/slurmdbd.pid" "$D/mariadb.pid" \
    "$D/munged.pid"; do
    comm=$(basename "$file" .pid)
    comm=${comm%%-*}
    [[ $comm == mariadb ]] && comm=mariadbd
    if [[ $comm == munged ]] && [[ -s $file ]] && other=$(other_cluster); then
        # hand munged over: that cluster's stop.sh stops it
        log "leaving munged running: the cluster of $other uses it"
        [[ -e $(dirname "$other")/env.sh ]] && mv -f "$file" "$(dirname "$other")/munged.pid"
        rm -f "$file"
        continue
    fi
    if pid=$(pid_of "$file" "$comm"); then
        stop_pid "$comm" "$pid"
        stopped=1
    fi
    rm -f "$file"
done

# 3. daemons started from this dir whose pid file was lost (they carry our SLURM_CONF)
for comm in slurmd slurmctld slurmdbd mariadbd; do
    for pid in $(pgrep -x "$comm" || true); do
        running "$pid" "$comm" || continue
        conf=$({ tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | sed -n 's/^SLURM_CONF=//p' | head -n1 || true)
        if [[ $conf == "$SLURM_CONF" ]]; then
            log "found $comm (pid $pid) of this cluster without a pid file"
            stop_pid "$comm" "$pid"
            stopped=1
        fi
    done
done
rm -f "$D/run/mysqld.sock" "$D/run/mysqld.sock.lock"

# 4. a multi-node cluster's namespaces (after its slurmds: nothing may run in them any more)
if [[ -s $D/netns ]]; then
    mapfile -t namespaces <"$D/netns"
    log "removing network namespaces ${namespaces[*]} and bridge $BRIDGE"
    net_down "${namespaces[@]}"
    rm -f "$D/netns"
    stopped=1
fi

if ((stopped)); then log "cluster in $D stopped"; else log "nothing running for $D"; fi
