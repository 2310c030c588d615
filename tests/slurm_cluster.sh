#!/usr/bin/env bash
# Start or stop a real single-node SLURM cluster on this machine, for tests.
#
#   tests/slurm_cluster.sh start STATE_DIR   # returns once the node accepts jobs
#   tests/slurm_cluster.sh stop STATE_DIR    # cancels its jobs, stops what start started
#
# Needs root and Debian's slurmctld, slurmd, slurm-client and munge packages:
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# No accounting daemon: use the squeue status command (tests/profiles/slurm-cpu).
# The configuration lives in STATE_DIR; /etc/slurm/slurm.conf is a symlink to it, because
# the Snakemake SLURM job-step plugin drops SLURM_CONF before its inner srun. An existing
# /etc/slurm/slurm.conf that is not such a symlink (a real cluster) is never touched.
set -euo pipefail

die() { echo "slurm_cluster.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 start|stop STATE_DIR"
action=$1
state=$(realpath -m "$2")
conf_link=/etc/slurm/slurm.conf
# slurmd reads gres.conf from the directory of the slurm.conf it was given.
gres_link=/etc/slurm/gres.conf
FAKE_GPUS=2

ours_link() {  # true when the system config is a symlink into a cluster of this script
    [ -L "$conf_link" ] && [ "$(readlink "$conf_link")" = "$state/slurm.conf" ]
}

stop_pid_file() {  # stop the process whose pid a file records, and wait for it to go
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$file"
}

start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd starts jobs as their users)"
    for tool in slurmctld slurmd sinfo munged munge; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install slurmctld slurmd slurm-client munge)"
    done
    if [ -e "$conf_link" ] || [ -L "$conf_link" ]; then
        if [ -L "$conf_link" ] && [ ! -e "$conf_link" ]; then
            rm -f "$conf_link"  # left behind by a test cluster that is gone
        elif ! ours_link; then
            die "$conf_link exists and is not a test cluster's symlink; not touching it"
        fi
    fi
    if [ -e "$gres_link" ] && [ ! -L "$gres_link" ]; then
        die "$gres_link exists and is not a test cluster's symlink; not touching it"
    fi
    mkdir -p "$state/ctld" "$state/spool" "$state/log"

    # munge authenticates slurm's daemons; start one only if none answers, and remember
    # its pid so that stop ends only a daemon this script started.
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- munged
        cp /run/munge/munged.pid "$state/munged.pid"
    fi

    # The node as slurmd sees it (sockets, cores, threads), with memory to spare.
    local hw mem
    hw=$(slurmd -C | head -n1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
    mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    cat >"$state/slurm.conf" <<EOF
ClusterName=easttest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 $hw RealMemory=$mem Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # Fake GPUs: SLURM allocates and accounts them like real ones (a job asking for two is
    # scheduled as on a GPU node), but they are character devices with /dev/null's numbers,
    # so the job sees no CUDA. slurmd counts a gpu gres only through its File= devices;
    # where mknod is not allowed, plain files work (slurmd logs that they are not devices).
    local i
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
        rm -f "$state/gpu$i"
        mknod "$state/gpu$i" c 1 3 2>/dev/null || : >"$state/gpu$i"
    done
    echo "Name=gpu File=$state/gpu[0-$((FAKE_GPUS - 1))]" >"$state/gres.conf"
    mkdir -p /etc/slurm
    ln -sfn "$state/slurm.conf" "$conf_link"
    ln -sfn "$state/gres.conf" "$gres_link"

    slurmctld -i
    slurmd -N localhost
    for _ in $(seq 150); do
        if [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = "idle" ]; then
            return 0
        fi
        sleep 0.2
    done
    sinfo >&2 || true
    tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
    die "the node did not become idle within 30 s"
}

stop() {
    if ours_link; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086  # one argument per job id
            scancel $jobs || true
        fi
    fi
    stop_pid_file "$state/slurmd.pid"
    stop_pid_file "$state/slurmctld.pid"
    stop_pid_file "$state/munged.pid"
    if ours_link; then
        rm -f "$conf_link"
        if [ "$(readlink "$gres_link" 2>/dev/null)" = "$state/gres.conf" ]; then
            rm -f "$gres_link"
        fi
    fi
}

case $action in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop STATE_DIR" ;;
esac
