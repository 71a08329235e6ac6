#!/usr/bin/env bash
# Start a private single-node SLURM cluster on loopback, for tests and for trying
# `snakemake --profile slurm` on one machine. Needs root and the Debian packages in
# requirements/apt.txt (slurm-wlm, munge); docs/hpc.md and the list below say why each
# setting is there.
#
#   sudo bash scripts/slurm/start_cluster.sh      # idempotent: a running cluster is left as is
#   sudo bash scripts/slurm/stop_cluster.sh       # stops exactly the daemons started here
#
# What it does:
# - writes slurm.conf and gres.conf under $BH_SLURM_ROOT/etc and symlinks them into
#   /etc/slurm (the nested `srun` inside each job finds its config only there: the jobstep
#   plugin strips SLURM_CONF from the environment);
# - creates fake GPUs: character devices cloned from /dev/null (major 1, minor 3), declared
#   as typed GRES `gpu:<type>:<n>` so `--gpus=N` and `--gpus=<type>:N` both schedule;
# - starts munged (unless one already answers), slurmctld (-c: clean state) and slurmd,
#   recording every PID it started under $BH_SLURM_ROOT/run; waits until the node is idle.
# No accounting daemon: job status comes from squeue (profile setting
# `slurm-status-command: squeue`, tests/slurm/profile/config.yaml); jobs stay visible in
# `squeue --states=all` for MinJobAge seconds.
#
# Environment (all optional):
#   BH_SLURM_ROOT       state, logs, configs, PID files   [/tmp/brainharmony-slurm]
#   BH_SLURM_GPUS       number of fake GPUs (0: none)     [4]
#   BH_SLURM_GPU_TYPE   GRES type of the fake GPUs        [fake]
#   BH_SLURM_PARTITION  name of the (default) partition   [debug]
#   BH_SLURM_CPUS       CPUs the node offers              [nproc, at least 8]
#                       (more than the machine has is fine: test jobs are tiny, and
#                       8 lets the test workflows run their jobs side by side)
#   BH_SLURM_INSTALL=1  apt-get install missing packages (scripts/install-system-deps.sh)
set -euo pipefail

ROOT=${BH_SLURM_ROOT:-/tmp/brainharmony-slurm}
GPUS=${BH_SLURM_GPUS:-4}
GPU_TYPE=${BH_SLURM_GPU_TYPE:-fake}
PARTITION=${BH_SLURM_PARTITION:-debug}
ncpu=$(nproc)
CPUS=${BH_SLURM_CPUS:-$((ncpu < 8 ? 8 : ncpu))}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ETC=/etc/slurm

say() { echo "start_cluster: $*"; }
die() { echo "start_cluster: error: $*" >&2; exit 1; }

# A PID file names a live process of the expected program (a recycled PID does not count).
alive() {  # alive <pidfile> <comm>
  local pid state
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
  [ "$state" != Z ]
}

wait_for() {  # wait_for <seconds> <command...>
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

[ "$(id -u)" -eq 0 ] || die "needs root (munge runs as user munge, configs go to $ETC)"
case "$ROOT" in /*) ;; *) die "BH_SLURM_ROOT must be an absolute path, got '$ROOT'" ;; esac

missing=()
for exe in munged munge slurmctld slurmd sbatch squeue sinfo scontrol; do
  command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${BH_SLURM_INSTALL:-0}" = 1 ]; then
    bash "$REPO/scripts/install-system-deps.sh"
  else
    die "missing ${missing[*]}: install requirements/apt.txt (make system-deps) or set BH_SLURM_INSTALL=1"
  fi
fi

# Never take over a SLURM configuration this script did not write.
MARK="Written by scripts/slurm/start_cluster.sh"
for f in slurm.conf gres.conf; do
  if [ -e "$ETC/$f" ] && ! [ -L "$ETC/$f" ]; then
    die "$ETC/$f exists and is not a symlink written here: this machine has its own SLURM setup"
  fi
  if [ -e "$ETC/$f" ] && [ "$f" = slurm.conf ] && ! grep -q "$MARK" "$ETC/$f"; then
    die "$ETC/$f points at $(readlink "$ETC/$f"), not at a config written by this script"
  fi
done

mkdir -p "$ROOT"/{etc,run,log,state/ctld,state/d,fakegpu}
chmod 755 "$ROOT"

# ---- configuration -------------------------------------------------------------------
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
REAL_MEM=$((mem_kb / 1024 * 8 / 10))   # 80 % of RAM, in MB (slurmd -C reports a bit less)

gres_line=""
if [ "$GPUS" -gt 0 ]; then
  for ((i = 0; i < GPUS; i++)); do
    dev="$ROOT/fakegpu/gpu$i"
    if [ ! -c "$dev" ]; then
      rm -f "$dev"
      # A GRES without a File= is dropped by slurmd, and a regular file is rejected:
      # a character device (here a /dev/null clone) is what passes.
      mknod -m 666 "$dev" c 1 3 || die "mknod $dev failed (no CAP_MKNOD?); run with BH_SLURM_GPUS=0"
    fi
  done
  gres_line="Gres=gpu:$GPU_TYPE:$GPUS"
fi

conf_new=$(mktemp)
gres_new=$(mktemp)
trap 'rm -f "$conf_new" "$gres_new"' EXIT
cat >"$conf_new" <<EOF
# $MARK: a single-node test cluster on loopback.
ClusterName=brainharmony
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
StateSaveLocation=$ROOT/state/ctld
SlurmdSpoolDir=$ROOT/state/d
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay in 'squeue --states=all' this long; the slurm plugin's squeue
# status mode needs >= 120 s.
MinJobAge=600
SchedulerParameters=sched_interval=2
# Trust the CPUs/memory declared below over what slurmd detects (CPUs may exceed nproc).
SlurmdParameters=config_overrides
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM $gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$GPUS" -gt 0 ]; then
  last=$((GPUS - 1))
  echo "NodeName=localhost Name=gpu Type=$GPU_TYPE File=$ROOT/fakegpu/gpu[0-$last]" >"$gres_new"
else
  : >"$gres_new"
fi

running=0
alive "$ROOT/run/slurmctld.pid" slurmctld && running=1
alive "$ROOT/run/slurmd.pid" slurmd && running=1
if [ $running = 1 ]; then
  if ! cmp -s "$conf_new" "$ROOT/etc/slurm.conf" || ! cmp -s "$gres_new" "$ROOT/etc/gres.conf"; then
    die "the cluster runs with a different configuration; stop it first (scripts/slurm/stop_cluster.sh)"
  fi
else
  cp "$conf_new" "$ROOT/etc/slurm.conf"
  cp "$gres_new" "$ROOT/etc/gres.conf"
fi
mkdir -p "$ETC"
ln -sfn "$ROOT/etc/slurm.conf" "$ETC/slurm.conf"
ln -sfn "$ROOT/etc/gres.conf" "$ETC/gres.conf"

# ---- munge ----------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  alive "$ROOT/run/munged.pid" munged && say "munged running (pid $(cat "$ROOT/run/munged.pid"))" \
    || say "munged already running (not started here, left alone)"
else
  if [ ! -s /etc/munge/munge.key ]; then   # Debian's postinst normally creates it
    install -d -o munge -g munge -m 700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  rm -f "$ROOT/run/munged.pid"
  install -d -o munge -g munge -m 755 "$ROOT/run/munge"
  runuser -u munge -- /usr/sbin/munged --pid-file="$ROOT/run/munge/munged.pid" \
    --log-file="$ROOT/run/munge/munged.log"
  wait_for 10 test -s "$ROOT/run/munge/munged.pid" || die "munged wrote no PID file"
  cp "$ROOT/run/munge/munged.pid" "$ROOT/run/munged.pid"
  wait_for 10 bash -c 'munge -n | unmunge' || die "munge does not answer; see $ROOT/run/munge/munged.log"
  say "started munged (pid $(cat "$ROOT/run/munged.pid"))"
fi

# ---- slurmctld, slurmd ----------------------------------------------------------------
if alive "$ROOT/run/slurmctld.pid" slurmctld; then
  say "slurmctld running (pid $(cat "$ROOT/run/slurmctld.pid"))"
else
  rm -f "$ROOT/run/slurmctld.pid"
  slurmctld -c -f "$ROOT/etc/slurm.conf"          # -c: no state from earlier runs
  wait_for 10 alive "$ROOT/run/slurmctld.pid" slurmctld \
    || die "slurmctld did not start; see $ROOT/log/slurmctld.log"
  say "started slurmctld (pid $(cat "$ROOT/run/slurmctld.pid"))"
fi
if alive "$ROOT/run/slurmd.pid" slurmd; then
  say "slurmd running (pid $(cat "$ROOT/run/slurmd.pid"))"
else
  rm -f "$ROOT/run/slurmd.pid"
  slurmd -N localhost -f "$ROOT/etc/slurm.conf"   # -N: node name, whatever the hostname
  wait_for 10 alive "$ROOT/run/slurmd.pid" slurmd || die "slurmd did not start; see $ROOT/log/slurmd.log"
  say "started slurmd (pid $(cat "$ROOT/run/slurmd.pid"))"
fi

node_ready() {
  local state
  state=$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -1)
  case "$state" in idle* | mix* | alloc*) return 0 ;; *) return 1 ;; esac
}
if ! wait_for 30 node_ready; then
  sinfo -N -l >&2 || true
  tail -n 20 "$ROOT/log/slurmctld.log" "$ROOT/log/slurmd.log" >&2 || true
  die "node 'localhost' is not idle after 30 s (state: $(sinfo -h -N -o %T 2>/dev/null | head -1))"
fi
sinfo -N -o '%N %P %T %c %m %G'
