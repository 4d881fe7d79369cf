#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start.sh.
#
#   scripts/slurm/stop.sh            # stop slurmd, slurmctld, slurmdbd (+ munged/mariadbd if start.sh started them)
#   scripts/slurm/stop.sh --purge    # ... and delete the controller state (queued jobs) and job spool
#
# Processes are stopped through their pid files only (SIGTERM, SIGKILL after 10 s).
set -euo pipefail

if [[ ${EUID} -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
    echo "stop.sh: must run as root" >&2; exit 1
fi

RUN=/run/slurm-local
log() { echo "[slurm/stop] $*"; }

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local name=$1 f=$2 pid
    if [[ ! -s $f ]] || ! kill -0 "$(cat "$f")" 2>/dev/null; then
        log "$name not running"; return 0
    fi
    pid=$(cat "$f")
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    log "$name did not exit, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
}

stop_pidfile slurmd    "$RUN/slurmd.pid"
stop_pidfile slurmctld "$RUN/slurmctld.pid"
stop_pidfile slurmdbd  "$RUN/slurmdbd.pid"
if [[ -f $RUN/mariadb.ours ]]; then
    stop_pidfile mariadbd /run/mysqld/mysqld.pid && rm -f "$RUN/mariadb.ours"
fi
if [[ -f $RUN/munged.ours ]]; then
    stop_pidfile munged /run/munge/munged.pid && rm -f "$RUN/munged.ours"
fi

if [[ ${1:-} == --purge ]]; then
    log "removing controller state and job spool under /var/spool/slurm-local"
    rm -rf /var/spool/slurm-local
fi
