#!/usr/bin/env bash
# Measure what one SLURM job costs on the local test cluster (docs/hpc.md quotes it):
# N no-op per-subject jobs submitted one SLURM job each, then the same N jobs as one
# group job (group: + --group-components). Needs a running cluster
# (scripts/slurm/start_cluster.sh). Usage: bash scripts/slurm/measure_overhead.sh [N]
set -euo pipefail
N=${1:-8}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SNAKEMAKE=${SNAKEMAKE:-$REPO/.venv/bin/snakemake}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

last_job() { squeue -h --states=all -o %i | sort -n | tail -1; }

# Sum of (EndTime - StartTime) over the SLURM jobs with an ID above $1.
slurm_seconds() {
  local total=0 n=0 id s e
  for id in $(squeue -h --states=all -o %i | sort -n); do
    [ "$id" -gt "$1" ] || continue
    s=$(scontrol show job "$id" | grep -o 'StartTime=[^ ]*' | cut -d= -f2)
    e=$(scontrol show job "$id" | grep -o 'EndTime=[^ ]*' | cut -d= -f2)
    total=$((total + $(date -d "$e" +%s) - $(date -d "$s" +%s))); n=$((n + 1))
  done
  echo "$n $total"
}

run() {  # run <label> <extra snakemake args...>
  local label=$1 dir="$work/$1"; shift
  mkdir -p "$dir"
  local before t0=$SECONDS
  before=$(last_job); before=${before:-0}
  timeout -k 20 900 "$SNAKEMAKE" -s "$REPO/tests/slurm/workflow/Snakefile" --directory "$dir" \
    --profile "$REPO/slurm" --profile "$REPO/tests/slurm/profile" --cores 2 \
    subjects_all "$@" >"$dir/run.log" 2>&1
  local wall=$((SECONDS - t0))
  read -r njobs secs < <(slurm_seconds "$before")
  printf '%-10s rule jobs=%-3s slurm jobs=%-3s wall=%4ss  slurm job time: total %4ss, per rule job %ss\n' \
    "$label" "$N" "$njobs" "$wall" "$secs" "$(awk -v s="$secs" -v n="$N" 'BEGIN {printf "%.1f", s / n}')"
}

run ungrouped --config n_subjects="$N" subject_group=
run grouped --config n_subjects="$N" --group-components subjects="$N"
