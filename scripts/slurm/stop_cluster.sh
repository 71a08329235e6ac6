#!/usr/bin/env bash
# Stop the single-node test cluster started by scripts/slurm/start_cluster.sh.
# Idempotent. Cancels leftover jobs, then stops exactly the daemons whose PIDs were
# recorded under $BH_SLURM_ROOT/run (slurmd, slurmctld, then munged if it was started
# there): TERM, and KILL after 15 s. It never signals a process by name.
# Removes the /etc/slurm symlinks it created; keeps logs and configs in $BH_SLURM_ROOT.
set -euo pipefail

ROOT=${BH_SLURM_ROOT:-/tmp/brainharmony-slurm}
ETC=/etc/slurm

say() { echo "stop_cluster: $*"; }

alive_pid() {  # alive_pid <pid> <comm>: a live (non-zombie) process of that program
  local pid=$1 state
  [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
  [ "$state" != Z ]
}

stop_daemon() {  # stop_daemon <name>: the PID recorded in $ROOT/run/<name>.pid
  local pidfile="$ROOT/run/$1.pid" pid deadline
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if alive_pid "$pid" "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while alive_pid "$pid" "$1" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive_pid "$pid" "$1"; then
      say "$1 (pid $pid) ignored TERM for 15 s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$pidfile"
}

if [ -s "$ROOT/run/slurmctld.pid" ] && alive_pid "$(cat "$ROOT/run/slurmctld.pid")" slurmctld; then
  # Leftover jobs (a test that failed midway): cancel, give their steps a moment to end.
  jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    say "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null || true)" ] && break
      sleep 0.2
    done
  fi
fi

stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged
rm -f "$ROOT/run/munge/munged.pid"

for f in slurm.conf gres.conf; do
  if [ -L "$ETC/$f" ] && [ "$(readlink "$ETC/$f")" = "$ROOT/etc/$f" ]; then
    rm -f "$ETC/$f"
  fi
done
say "done"
