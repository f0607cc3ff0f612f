#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, from the distribution's packages: munged, slurmctld and slurmd
# started directly (containers have no systemd), one node with this machine's cores and memory, one partition
# `debug`. Run as root. Running it again is harmless: it installs nothing twice and restarts the daemons only
# when the configuration changed or one of them is not running. Ends when `sinfo` shows the node idle (or
# mixed/allocated), or fails naming what it waited for. Stop the cluster with .ci/slurm-teardown.sh.
#
# Debian/Ubuntu (apt-get) only. Tunables: SLURM_SETUP_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

timeout_s=${SLURM_SETUP_TIMEOUT:-60}
conf_dir=/etc/slurm
log_dir=/var/log/slurm
say() { echo "slurm-setup: $*"; }
die() { echo "slurm-setup: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || die "apt-get not found: this script installs SLURM from Debian/Ubuntu packages"

# 1. Packages. slurm-wlm pulls slurmctld, slurmd and the client commands; munge authenticates them.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' maintainer scripts try to start services; in a container that fails or hangs, and we start
    # the daemons ourselves below, so forbid it for this install (policy-rc.d exit 101 = "not allowed").
    policy=/usr/sbin/policy-rc.d
    saved_policy=$(mktemp)
    if [ -e "$policy" ]; then cp -p "$policy" "$saved_policy"; else rm -f "$saved_policy"; fi
    restore_policy() { if [ -e "$saved_policy" ]; then mv "$saved_policy" "$policy"; else rm -f "$policy"; fi; }
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
    restore_policy
    trap - EXIT
fi

# 2. Munge key (created once; every daemon on the cluster must share it).
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
chmod 700 /etc/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge

# 3. slurm.conf: this machine as the one node. The node is addressed as 127.0.0.1 so that nothing depends on the
# host name resolving. CR_CPU with memory not consumable: a 1-CPU job takes one CPU and no memory share, so
# as many 1-CPU jobs run at once as there are CPUs.
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# slurmd drains a node whose configured memory exceeds what it finds; leave it a margin.
real_mem=$(( mem_mb * 95 / 100 ))
mkdir -p "$conf_dir" "$log_dir" /var/spool/slurmctld /var/spool/slurmd /run/slurm
marker="# One-node cluster written by .ci/slurm-setup.sh; rewritten when the machine changes."
if [ -e "$conf_dir/slurm.conf" ] && [ "$(head -n1 "$conf_dir/slurm.conf")" != "$marker" ]; then
    die "$conf_dir/slurm.conf exists and was not written by this script; refusing to overwrite it"
fi
new_conf=$(mktemp)
cat > "$new_conf" <<EOF
$marker
ClusterName=otrobust-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds (default 120) before it may start again.
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Schedule on every event and re-check the queue every 2 s (defaults: 3 s delay, 60 s and 30 s loops), so a
# job whose dependency or requeue delay just ended starts within seconds.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=${log_dir}/slurmctld.log
SlurmdLogFile=${log_dir}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# Short timers: a test waits seconds, not minutes, for a killed or requeued job to come back.
KillWait=5
# Finished jobs stay visible to scontrol for an hour: without accounting (no sacct) it is the only record.
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$new_conf" "$conf_dir/slurm.conf"; then
    say "writing $conf_dir/slurm.conf (${cpus} CPUs, ${real_mem} MB)"
    mv "$new_conf" "$conf_dir/slurm.conf"
    chmod 644 "$conf_dir/slurm.conf"
    changed=1
else
    rm -f "$new_conf"
fi

# 4. Daemons, started directly and backgrounded (each daemonises itself).
running() {  # running NAME PIDFILE: the daemon in PIDFILE is alive and is NAME
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
stop() {  # stop NAME PIDFILE
    local pid
    if running "$1" "$2"; then
        pid=$(cat "$2")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$2"
}

munge_pid=/run/munge/munged.pid
if ! running munged "$munge_pid" && ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$munge_pid" \
        || /usr/sbin/munged --force --pid-file="$munge_pid"
fi
munge -n | unmunge >/dev/null || die "munge does not authenticate (see /var/log/munge/munged.log)"

if [ "$changed" = 1 ]; then
    stop slurmd /run/slurm/slurmd.pid
    stop slurmctld /run/slurm/slurmctld.pid
fi
if ! running slurmctld /run/slurm/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start (see $log_dir/slurmctld.log)"
fi
if ! running slurmd /run/slurm/slurmd.pid; then
    say "starting slurmd"
    slurmd || die "slurmd did not start (see $log_dir/slurmd.log)"
fi

# 5. Wait for the node. A node left down/drained by an earlier configuration is resumed once.
resumed=0
deadline=$(( SECONDS + timeout_s ))
while :; do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            if [ "$resumed" = 0 ]; then
                scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
                resumed=1
            fi ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        die "node $host not idle after ${timeout_s}s (sinfo state: '${state:-no answer}');" \
            "see $log_dir/slurmctld.log and $log_dir/slurmd.log"
    fi
    sleep 0.5
done
say "node $host is $state; partition debug, ${cpus} CPUs (sinfo; squeue; tail $log_dir/*.log)"
