#!/usr/bin/env bash
# scripts/start-slurm.sh - install, configure and start a real one-node Slurm cluster
# for exca's tests (Debian 12, slurm-wlm 22.05, as root, no systemd needed).
#
# What it does, in order:
#   1. apt-installs what is missing: slurm-wlm, munge, tini (+ slurmdbd, mariadb-server
#      for accounting);
#   2. starts munged, mariadbd, slurmdbd, slurmctld and slurmd as background daemons
#      (each `setsid`-detached, logs in /var/log/slurm/<name>.out), records each pid in
#      /run/slurm-ci/<name>.pid;
#   3. writes /etc/slurm/slurm.conf (node = `hostname -s`, resources from `slurmd -C`,
#      one partition `debug`, the default) and /etc/slurm/slurmdbd.conf;
#   4. waits until `sinfo` shows the node idle (or mixed/allocated), resuming it once
#      if it comes back drained/down, and until `sacct` answers.
#
# Idempotent: when the cluster is already up it leaves the daemons alone (it restarts
# slurmctld/slurmd, or slurmdbd, only if the generated config changed) and just waits for
# the node: under a second. Measured on a 2-core machine: daemons down, packages installed:
# about 3 s (5 s after the daemons were SIGKILLed); a bare Debian 12: about 22 s (18 s of
# apt install from a warm package cache) plus the download of about 70 MB of packages.
# scripts/stop-slurm.sh stops exactly the daemons this script started, and nothing else.
#
# Concurrency: the whole script runs under an exclusive flock on /run/slurm-ci/lock
# (stop-slurm.sh takes the same lock), so a second concurrent invocation (two pytest
# sessions, CI and a developer) waits for the first one and then finds the cluster up.
#
# Knobs (environment):
#   SLURM_CI_ACCOUNTING=1   1: MariaDB + slurmdbd so `sacct` works (submitit reads job
#                           states with sacct; without it, a job that ends without a
#                           result file - cancelled, timed out, killed - is never seen
#                           as finished); 0: no accounting (lighter; sacct fails)
#   SLURM_CI_TIMEOUT=180    seconds allowed for waiting (lock + daemons + idle node),
#                           not counting the apt install
#   SLURM_CI_CLUSTER=ci     ClusterName
#   SLURM_CI_DBPASS=...     password of the MariaDB user 'slurm' (local socket only)
#
# Gotchas:
#   - The node name must equal `hostname -s`; everything is pinned to 127.0.0.1 and the
#     host name is added to /etc/hosts if it does not resolve.
#   - The generated slurm.conf is what ../shared/slurm/start-slurm.sh (the organisation's
#     recipe this script derives from) writes, but for one line: ProctrackType=proctrack/pgid
#     (the recipe's proctrack/linuxproc loses a job's python worker once the batch shell
#     is gone - scancel and time limits then never kill it - where real clusters, with
#     proctrack/cgroup, kill everything the job started). So a cluster the recipe started
#     is restarted once by this script. Change the text only deliberately: any change
#     restarts slurmctld and slurmd on the next run.
#   - The caller's SLURM_CONF is ignored (forced to /etc/slurm/slurm.conf here), so a test
#     pointing SLURM_CONF at a dead config cannot confuse this script.
#   - Daemons must not inherit the lock's file descriptor (they would hold the lock for
#     their whole life): `launch` closes fd 9 for them.
#   - KillWait=5: scancel/timeout sends SIGKILL 5 s after SIGTERM (default 30 s; submitit
#     jobs handle SIGTERM themselves). batch_sched_delay=0: jobs start at once (default up
#     to 3 s late). MinJobAge=300 (default): finished jobs leave `squeue` after 5 min.
#   - `afterok` on a failed job leaves the dependent PENDING forever unless it is submitted
#     with kill_on_invalid_dep=yes.
#   - With `srun` on PATH, submitit.AutoExecutor picks Slurm even when the daemons are
#     down: check the controller (`scontrol ping`), not the binaries.
#   - slurmd runs under `tini -s` (a subreaper): the processes of a job Slurm kills
#     (scancel, time limit) end as zombies of whoever adopts them. Adopted by this
#     machine's init, which reaps them up to ~1.5 s late, they kept each cancelled job
#     COMPLETING, its CPU held, ~3.7 s (proctrack/pgid looks at the process group again
#     1 s, then 2 s later while a zombie is left); adopted and reaped at once by tini,
#     ~1.2 s. $PIDDIR/slurmd.pid records slurmd itself (tini ends with it); a slurmd of ours
#     running without tini (an earlier version of this script) is restarted once.
#   - Job ids keep growing across restarts (state in /var/spool/slurmctld and the DB).
#   - A session whose processes were killed leaves stale pid files behind: they are
#     detected (pid gone, or its command name differs) and replaced.
set -euo pipefail

ACCOUNTING=${SLURM_CI_ACCOUNTING:-1}
TIMEOUT=${SLURM_CI_TIMEOUT:-180}
CLUSTER=${SLURM_CI_CLUSTER:-ci}
DBPASS=${SLURM_CI_DBPASS:-slurmdbpass}
PIDDIR=/run/slurm-ci
LOGDIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
export SLURM_CONF=$CONF

log() { echo "[start-slurm] $*"; }
die() { echo "[start-slurm] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# ---------------------------------------------------------------- lock
mkdir -p "$PIDDIR" "$LOGDIR"
exec 9>"$PIDDIR/lock"
if ! flock -n 9; then
  log "another start/stop-slurm.sh holds $PIDDIR/lock; waiting (up to ${TIMEOUT}s)"
  flock -w "$TIMEOUT" 9 || die "could not take $PIDDIR/lock within ${TIMEOUT}s"
fi

# ---------------------------------------------------------------- install
pkgs=(slurm-wlm munge tini)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq || log "WARNING: apt-get update failed; trying the package lists we have"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed in ${SECONDS}s"
fi
log "slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm), munge $(dpkg-query -W -f='${Version}' munge)"
DEADLINE=$((SECONDS + TIMEOUT))   # the timeout counts from here: apt is not bounded by it
left() { echo $((DEADLINE - SECONDS)); }

# ---------------------------------------------------------------- helpers
# running PID -> 0 if PID is a live process; a zombie (killed, not yet reaped by init,
# which can take seconds here) counts as dead
running() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# alive NAME COMM -> 0 if $PIDDIR/NAME.pid names a live process whose comm is COMM
alive() {
  local f="$PIDDIR/$1.pid" pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# foreign COMM -> 0 if a live process named COMM runs that this script did not start
foreign() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = "$1" ] && running "${p#/proc/}" && return 0
  done
  return 1
}

# child_named PID COMM -> the pid of PID's child whose command name is COMM (none: "")
child_named() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = "$2" ] && { echo "$c"; return 0; }
  done
  echo ""
}

# launch NAME COMM CMD... : start CMD (a foreground daemon) detached, record its pid.
# CMD may be a wrapper (tini) that runs the daemon as its child: the child is recorded.
# fd 9 (the lock) is closed for the daemon, else it would hold the lock forever.
launch() {
  local name=$1 comm=$2; shift 2
  setsid "$@" </dev/null >>"$LOGDIR/$name.out" 2>&1 9>&- &
  local pid=$! child
  echo "$pid" >"$PIDDIR/$name.pid"
  sleep 0.3
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$comm" ]; then
    child=$(child_named "$pid" "$comm")
    [ -z "$child" ] || { pid=$child; echo "$pid" >"$PIDDIR/$name.pid"; }
  fi
  if ! alive "$name" "$comm"; then
    rm -f "$PIDDIR/$name.pid"
    tail -n 20 "$LOGDIR/$name.out" >&2 || true
    die "$name failed to start (see $LOGDIR/$name.out)"
  fi
  log "started $name pid $pid"
}

# stop_ours NAME COMM : stop a daemon previously started by this script (by pid)
stop_ours() {
  local name=$1 comm=$2 pid
  alive "$name" "$comm" || { rm -f "$PIDDIR/$name.pid"; return 0; }
  pid=$(cat "$PIDDIR/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do running "$pid" || break; sleep 0.2; done
  if running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$PIDDIR/$name.pid"
  log "stopped $name pid $pid"
}

# wait_for DESC CMD... : retry CMD (each try bounded to 10 s) until it succeeds or the
# deadline passes
wait_for() {
  local desc=$1; shift
  until timeout 10 "$@" >/dev/null 2>&1; do
    [ "$(left)" -gt 0 ] || die "timeout waiting for $desc"
    sleep 0.3
  done
}

# ---------------------------------------------------------------- hostname
NODE=$(hostname -s)
if ! getent hosts localhost >/dev/null; then   # slurmdbd and the DB are reached as localhost
  log "adding 'localhost' to /etc/hosts"
  echo "127.0.0.1 localhost" >>/etc/hosts
fi
if ! getent hosts "$NODE" >/dev/null; then
  log "adding '$NODE' to /etc/hosts"
  echo "127.0.0.1 $NODE" >>/etc/hosts
fi

# ---------------------------------------------------------------- munge
munge_ok() { timeout 10 bash -c 'munge -n | unmunge' >/dev/null; }
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if alive munged munged; then
  log "munged already running (pid $(cat $PIDDIR/munged.pid))"
elif munge_ok 2>/dev/null; then
  log "a munged not started by this script is running; using it"
else
  rm -f /run/munge/munged.pid
  launch munged munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
fi
wait_for munged bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- config
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld "$LOGDIR"
install -d -o root -g root -m 0755 /var/spool/slurmd
NODELINE=$(slurmd -C | head -n 1)          # NodeName=<host> CPUs=.. ... RealMemory=..
case "$NODELINE" in NodeName=*) ;; *) die "unexpected 'slurmd -C' output: $NODELINE";; esac

if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log"
fi

# The shared recipe's text but for ProctrackType (see Gotchas): any change restarts
# slurmctld and slurmd on the next run.
NEWCONF=$(cat <<EOF
# generated by start-slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/none
ReturnToService=2
# SIGTERM->SIGKILL grace on scancel/timeout (default 30 s; submitit jobs ignore SIGTERM)
KillWait=5
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
# default batch_sched_delay=3 delays every sbatch job start by up to 3 s
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$ACCT
$NODELINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then
  printf '%s\n' "$NEWCONF" >"$CONF.tmp"
  chmod 0644 "$CONF.tmp"
  mv -f "$CONF.tmp" "$CONF"               # atomic: a reader never sees half a file
  CONF_CHANGED=1
  log "wrote $CONF"
fi

# ---------------------------------------------------------------- accounting
if [ "$ACCOUNTING" = 1 ]; then
  install -d -o mysql -g root -m 0755 /run/mysqld
  if alive mariadbd mariadbd; then
    log "mariadbd already running (pid $(cat $PIDDIR/mariadbd.pid))"
  elif timeout 10 mariadb-admin ping >/dev/null 2>&1; then
    log "a MariaDB not started by this script is running; using it"
  else
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    launch mariadbd mariadbd /usr/sbin/mariadbd --user=mysql --skip-networking
  fi
  wait_for "MariaDB" mariadb-admin ping
  timeout 30 mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

  NEWDBD=$(cat <<EOF
# generated by start-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
)
  DBD_CHANGED=0
  if [ ! -f "$DBDCONF" ] || [ "$(cat "$DBDCONF")" != "$NEWDBD" ]; then
    printf '%s\n' "$NEWDBD" >"$DBDCONF"
    DBD_CHANGED=1
    log "wrote $DBDCONF"
  fi
  chown slurm:slurm "$DBDCONF"; chmod 0600 "$DBDCONF"   # slurmdbd refuses other modes

  [ "$DBD_CHANGED" = 1 ] && stop_ours slurmdbd slurmdbd
  if alive slurmdbd slurmdbd; then
    log "slurmdbd already running (pid $(cat $PIDDIR/slurmdbd.pid))"
  elif foreign slurmdbd; then
    log "a slurmdbd not started by this script is running; using it"
  else
    launch slurmdbd slurmdbd /usr/sbin/slurmdbd -D
  fi
  wait_for "slurmdbd" sacctmgr -n list cluster
  if [ -z "$(timeout 10 sacctmgr -n -P list cluster format=cluster where cluster="$CLUSTER")" ]; then
    timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null
    log "registered cluster '$CLUSTER' in slurmdbd"
  fi
fi

# ---------------------------------------------------------------- slurmctld / slurmd
if [ "$CONF_CHANGED" = 1 ]; then
  stop_ours slurmd slurmd
  stop_ours slurmctld slurmctld
fi
if alive slurmctld slurmctld; then
  log "slurmctld already running (pid $(cat $PIDDIR/slurmctld.pid))"
elif foreign slurmctld; then
  [ "$CONF_CHANGED" = 1 ] && log "WARNING: $CONF changed but slurmctld was not started by this script; not restarting it"
  log "a slurmctld not started by this script is running; using it"
else
  launch slurmctld slurmctld /usr/sbin/slurmctld -D
fi
wait_for "slurmctld" bash -c 'scontrol ping | grep -q UP'

# (under tini, a subreaper: see Gotchas)
if alive slurmd slurmd && [ "$(cat "/proc/$(awk '{print $4}' "/proc/$(cat "$PIDDIR/slurmd.pid")/stat")/comm" 2>/dev/null)" != tini ]; then
  log "restarting slurmd under tini (it reaps the processes of the jobs Slurm kills)"
  stop_ours slurmd slurmd
fi
if alive slurmd slurmd; then
  log "slurmd already running (pid $(cat $PIDDIR/slurmd.pid))"
elif foreign slurmd; then
  log "a slurmd not started by this script is running; using it"
else
  launch slurmd slurmd tini -s -- /usr/sbin/slurmd -D -N "$NODE"
fi

# ---------------------------------------------------------------- wait for idle node
resumed=0
while :; do
  state=$(timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing|planned) break ;;  # (planned: kept for a pending job)
    *drain*|down*)
      if [ $resumed = 0 ]; then
        log "node state '$state' ($(timeout 10 sinfo -h -n "$NODE" -o '%E' || true)); resuming"
        timeout 10 scontrol update nodename="$NODE" state=resume || true
        resumed=1
      fi ;;
  esac
  [ "$(left)" -gt 0 ] || { timeout 10 sinfo -R >&2 || true; die "timeout: node '$NODE' state is '$state'"; }
  sleep 0.3
done
# the controller must also reach slurmdbd, else `sacct` (hence submitit) fails
[ "$ACCOUNTING" = 1 ] && wait_for "sacct" sacct -n -X -j 1
log "ready after ${SECONDS}s: $(timeout 10 sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"
log "pids: $(for f in "$PIDDIR"/*.pid; do [ -e "$f" ] && printf '%s=%s ' "$(basename "$f" .pid)" "$(cat "$f")"; done)"
