#!/usr/bin/env bash
# Install the one-node SLURM test cluster's Debian packages when they are missing (root and a Debian mirror needed;
# ~4 s). Nothing is started here: tests/slurm_cluster.py starts munged, slurmctld and slurmd as the test's own processes.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
   && command -v sbatch >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-slurm: not root; install slurmctld slurmd slurm-client munge with your package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
  || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
