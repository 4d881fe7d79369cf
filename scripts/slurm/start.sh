#!/usr/bin/env bash
# Start (or check) a single-node SLURM cluster on this machine.
#
#   sudo scripts/slurm/start.sh          # install if needed, configure, start, wait for idle node
#   scripts/slurm/stop.sh                # stop the daemons again
#
# Idempotent: running it again while the cluster is up only prints the status;
# if the generated configuration changed, the daemons are restarted.
#
# Environment knobs (all optional):
#   SLURM_PARTITION   partition name                       (default: debug)
#   SLURM_MAXTIME     partition MaxTime                    (default: 1-00:00:00)
#   SLURM_MEM_MARGIN  MB of RAM kept back from slurm       (default: 5% of RAM, min 512)
#   SLURM_NO_GPU=1    do not expose /dev/nvidia* as gres   (default: expose if present)
#   SLURM_START_TIMEOUT seconds to wait for the node       (default: 90)
#   SLURM_CRED_EXPIRE seconds a requeued job waits before it may start again
#                     (slurm default 120; here default 10 so requeue tests are quick)
#   SLURM_ACCOUNTING=0  skip slurmdbd + MariaDB            (default: 1 = install and run them)
#
# Accounting (slurmdbd) is on by default because submitit polls `sacct` to notice
# jobs that died without writing a result (scancel, time limit, OOM, node failure);
# without sacct such a job looks "UNKNOWN" forever and a Hydra multirun would hang.
#
# Targets Debian/Ubuntu (apt-get). Tested with Debian 12 (slurm 22.05.8, munge 0.5.15),
# including inside containers without a usable cgroup hierarchy: it uses
# proctrack/linuxproc + task/none, so nothing needs cgroups.
set -euo pipefail

if [[ ${EUID} -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$0" "$@"
    fi
    echo "start.sh: must run as root (no sudo available)" >&2
    exit 1
fi

PARTITION=${SLURM_PARTITION:-debug}
MAXTIME=${SLURM_MAXTIME:-1-00:00:00}
START_TIMEOUT=${SLURM_START_TIMEOUT:-90}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
NODE=$(hostname -s)
CLUSTER=rlsft-local

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
CTLD_STATE=/var/spool/slurm-local/ctld
SLURMD_SPOOL=/var/spool/slurm-local/d
CTLD_PID=/run/slurm-local/slurmctld.pid
SLURMD_PID=/run/slurm-local/slurmd.pid
DBD_PID=/run/slurm-local/slurmdbd.pid
MYSQL_PID=/run/mysqld/mysqld.pid
MUNGE_PID=/run/munge/munged.pid

log() { echo "[slurm/start] $*"; }

pid_alive() {  # pid_alive PIDFILE -> 0 if the process in PIDFILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# ---------------------------------------------------------------- 1. install
need_pkgs=()
command -v slurmctld >/dev/null 2>&1 || need_pkgs+=(slurmctld)
command -v slurmd    >/dev/null 2>&1 || need_pkgs+=(slurmd)
command -v munged    >/dev/null 2>&1 || need_pkgs+=(munge)
command -v sbatch    >/dev/null 2>&1 || need_pkgs+=(slurm-client)
if [[ $ACCOUNTING == 1 ]]; then
    command -v slurmdbd >/dev/null 2>&1 || need_pkgs+=(slurmdbd)
    command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || need_pkgs+=(mariadb-server)
fi
if (( ${#need_pkgs[@]} )); then
    log "installing ${need_pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Try without an index refresh first (fast on machines that have one),
    # refresh and retry when the packages are unknown.
    if ! apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/tmp/slurm-apt.log 2>&1; then
        apt-get update -q >>/tmp/slurm-apt.log 2>&1 || true   # partial failures: try the install anyway
        apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>/tmp/slurm-apt.log 2>&1 \
            || { cat /tmp/slurm-apt.log >&2; exit 1; }
    fi
    # The Debian packages enable systemd units; this script runs the daemons itself (pid files
    # under /run/slurm-local), so keep systemd's slurm units from competing for the same ports.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now slurmctld slurmd slurmdbd >/dev/null 2>&1 || true
    fi
fi
log "slurm $(slurmctld -V | awk '{print $2}'), munge $(munged -V 2>&1 | awk '{print $1}' | sed 's/munge-//')"

# ---------------------------------------------------------------- 2. configuration
mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL" "$(dirname "$CTLD_PID")"

# Hardware as slurmd sees it: "NodeName=x CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=.."
hw=$(slurmd -C | head -n1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
[[ -n $cpus ]] || cpus=$(nproc)
topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)
mem_total=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[[ -n $mem_total ]] || mem_total=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
margin=${SLURM_MEM_MARGIN:-$(( mem_total / 20 > 512 ? mem_total / 20 : 512 ))}
real_mem=$(( mem_total - margin ))
(( real_mem > 256 )) || real_mem=$mem_total

gres_line="" ; node_gres="" ; gres_conf=""
if [[ -z ${SLURM_NO_GPU:-} ]]; then
    gpus=( $(ls /dev/nvidia[0-9]* 2>/dev/null | sort -V || true) )
    if (( ${#gpus[@]} )); then
        gres_line="GresTypes=gpu"
        node_gres="Gres=gpu:${#gpus[@]}"
        for dev in "${gpus[@]}"; do gres_conf+="NodeName=${NODE} Name=gpu File=${dev}"$'\n'; done
    fi
fi
if [[ $ACCOUNTING == 1 ]]; then
    acct_lines="JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
else
    acct_lines="JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none"
fi
def_mem_per_cpu=$(( real_mem / cpus < 1024 ? real_mem / cpus : 1024 ))

slurm_conf=$(cat <<CONF
# Generated by scripts/slurm/start.sh -- single-node test cluster. Do not edit by hand.
ClusterName=${CLUSTER}
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays the restart of a requeued job (default 120 s); short for tests.
AuthInfo=cred_expire=${CRED_EXPIRE}
MpiDefault=none
# No cgroups needed (containers): track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${acct_lines}
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
SchedulerType=sched/backfill
# schedule often: requeued jobs become eligible again without waiting for the 60 s cycle
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${def_mem_per_cpu}
# Requeue: allow 'scontrol requeue' and requeue on node failure / preemption.
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
StateSaveLocation=${CTLD_STATE}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
${gres_line}
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} ${topo} RealMemory=${real_mem} ${node_gres} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=${MAXTIME} State=UP
CONF
)
cgroup_conf="# Generated by scripts/slurm/start.sh
CgroupPlugin=cgroup/v1
"

changed=0
write_if_changed() {  # write_if_changed FILE CONTENT
    if [[ ! -f $1 ]] || [[ "$(cat "$1")" != "$(printf '%s' "$2")" ]]; then
        printf '%s\n' "$2" >"$1"
        changed=1
    fi
}
write_if_changed "$CONF_DIR/slurm.conf" "$slurm_conf"
write_if_changed "$CONF_DIR/cgroup.conf" "$cgroup_conf"
if [[ $ACCOUNTING == 1 ]]; then
    dbd_pass_file=/etc/slurm/.slurmdbd-db-pass
    [[ -s $dbd_pass_file ]] || { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$dbd_pass_file"; chmod 600 "$dbd_pass_file"; }
    dbd_pass=$(cat "$dbd_pass_file")
    dbd_conf="# Generated by scripts/slurm/start.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${dbd_pass}
StorageLoc=slurm_acct_db
PidFile=${DBD_PID}
LogFile=${LOG_DIR}/slurmdbd.log
DebugLevel=info"
    write_if_changed "$CONF_DIR/slurmdbd.conf" "$dbd_conf"
    chmod 600 "$CONF_DIR/slurmdbd.conf"
fi
if [[ -n $gres_conf ]]; then
    write_if_changed "$CONF_DIR/gres.conf" "$gres_conf"
elif [[ -f $CONF_DIR/gres.conf ]]; then
    rm -f "$CONF_DIR/gres.conf"; changed=1
fi
(( changed )) && log "wrote $CONF_DIR/slurm.conf (node ${NODE}: CPUs=${cpus} RealMemory=${real_mem} ${node_gres})"

# ---------------------------------------------------------------- 3. munge
if ! id munge >/dev/null 2>&1; then
    echo "start.sh: user 'munge' missing (munge package broken?)" >&2; exit 1
fi
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge; chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if ! pid_alive "$MUNGE_PID"; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged
    touch /run/slurm-local/munged.ours
fi
for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n </dev/null | unmunge >/dev/null || { echo "start.sh: munge does not work" >&2; exit 1; }

# ---------------------------------------------------------------- 4. slurm daemons
stop_pidfile() {
    local f=$1 pid
    pid_alive "$f" || return 0
    pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}
if (( changed )); then
    stop_pidfile "$SLURMD_PID"
    stop_pidfile "$CTLD_PID"
    stop_pidfile "$DBD_PID"
fi
if [[ $ACCOUNTING == 1 ]]; then
    if ! pid_alive "$MYSQL_PID"; then
        log "starting mariadbd"
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        (cd / && setsid /usr/sbin/mariadbd --user=mysql </dev/null >/dev/null 2>&1 &)
        touch /run/slurm-local/mariadb.ours   # stop.sh only stops what start.sh started
    fi
    for _ in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.3; done
    mariadb-admin ping >/dev/null || { echo "start.sh: mariadbd did not start" >&2; exit 1; }
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${dbd_pass}';
                ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${dbd_pass}';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    if ! pid_alive "$DBD_PID"; then
        log "starting slurmdbd"
        slurmdbd
    fi
    for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.3; done
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
fi
if ! pid_alive "$CTLD_PID"; then
    log "starting slurmctld"
    slurmctld
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
if ! pid_alive "$SLURMD_PID"; then
    log "starting slurmd"
    slurmd -N "$NODE"
fi

# ---------------------------------------------------------------- 5. wait for the node
deadline=$(( SECONDS + START_TIMEOUT ))
resumed=0
while :; do
    state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)
    case $state in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*|unknown*)
            if (( ! resumed )) && (( SECONDS > deadline - START_TIMEOUT + 5 )); then
                log "node is '$state', resuming it"
                scontrol update nodename="$NODE" state=resume 2>/dev/null || true
                resumed=1
            fi ;;
    esac
    if (( SECONDS > deadline )); then
        echo "start.sh: node $NODE not ready after ${START_TIMEOUT}s (state '$state')" >&2
        tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
        exit 1
    fi
    sleep 1
done

# ---------------------------------------------------------------- 6. status
log "cluster '${CLUSTER}' up: node ${NODE} is ${state}"
sinfo -o '%P %a %l %D %T %N %c %m %G'
