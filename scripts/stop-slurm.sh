#!/usr/bin/env bash
# scripts/stop-slurm.sh - stop the one-node Slurm cluster started by scripts/start-slurm.sh,
# and only the daemons that script started.
#
# Each pid comes from /run/slurm-ci/<name>.pid and is signalled only if that process still
# has the expected command name (guards against pid reuse after a reboot or a kill); a
# stale pid file is just removed. Daemons this script did not start (a system slurmctld,
# a MariaDB of someone else) are never touched. Order: slurmd, slurmctld, slurmdbd,
# mariadbd, munged (the reverse of the start order). SIGTERM, then SIGKILL after 30 s.
#
# Kept: packages, /etc/slurm/*.conf, the munge key, the accounting database and the
# controller's state (/var/spool/slurmctld), so job ids keep growing across restarts and
# the next start-slurm.sh is quick.
#
# Takes the same lock as start-slurm.sh (/run/slurm-ci/lock), so it never pulls the
# cluster down in the middle of a concurrent start. Needs root. No knobs.
set -uo pipefail
PIDDIR=/run/slurm-ci

[ "$(id -u)" = 0 ] || { echo "[stop-slurm] ERROR: must run as root" >&2; exit 1; }
[ -d "$PIDDIR" ] || { echo "[stop-slurm] nothing to stop ($PIDDIR does not exist)"; exit 0; }

exec 9>"$PIDDIR/lock"
flock -w 300 9 || { echo "[stop-slurm] ERROR: could not take $PIDDIR/lock" >&2; exit 1; }

# running PID -> 0 if PID is a live process; a zombie (killed, not yet reaped by init,
# which can take seconds here) counts as dead
running() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

stop() {
  local name=$1 f="$PIDDIR/$1.pid" pid comm
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  if [ "$comm" != "$name" ] || ! running "$pid"; then
    echo "[stop-slurm] $name: pid $pid not running (or reused by '$comm'); removing stale pid file"
    rm -f "$f"; return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 150); do running "$pid" || break; sleep 0.2; done
  if running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    echo "[stop-slurm] $name pid $pid ignored SIGTERM for 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  echo "[stop-slurm] stopped $name (pid $pid)"
}

# reverse start order: compute node, controller, accounting, database, auth
for d in slurmd slurmctld slurmdbd mariadbd munged; do stop "$d"; done
