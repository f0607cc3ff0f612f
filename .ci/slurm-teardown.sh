#!/usr/bin/env bash
# Stops the one-node cluster that .ci/slurm-setup.sh started (slurmd, slurmctld, munged, by their pid files)
# and forgets its jobs. With --purge it also removes the packages, the configuration and the munge key, so that
# the next set-up starts from nothing. Run as root; stopping a cluster that is not running is harmless.
set -euo pipefail

say() { echo "slurm-teardown: $*"; }
[ "$(id -u)" = 0 ] || { echo "slurm-teardown: error: must run as root" >&2; exit 1; }

stop() {  # stop NAME PIDFILE: end the daemon whose pid is in PIDFILE, if it is NAME, and wait for it
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 0
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
        say "stopping $1 ($pid)"
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$2"
}

stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop munged /run/munge/munged.pid
rm -rf /var/spool/slurmctld /var/spool/slurmd

if [ "${1:-}" = --purge ]; then
    say "removing packages, /etc/slurm and the munge key"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq \
        slurm-wlm slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge >/dev/null
    rm -rf /etc/slurm /etc/munge /var/log/slurm /var/lib/munge /var/log/munge /run/slurm /run/munge
fi
