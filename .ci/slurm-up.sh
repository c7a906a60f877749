#!/usr/bin/env bash
# A single-node Slurm cluster on localhost for the Slurm executor test (tests/test_slurm.py).
# Debian's slurm-wlm + munge, slurmctld and slurmd started by hand (no systemd). Needs root and
# apt; idempotent (does nothing when `sinfo` already shows an idle node). Recipe and timings:
# slurm-notes (install ~10 s, daemons idle in < 0.1 s).
set -euo pipefail

if command -v sinfo >/dev/null && timeout 5 sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "slurm-up: cluster already up"; exit 0
fi
if [ "$(id -u)" -ne 0 ]; then echo "slurm-up: needs root; the Slurm test will skip"; exit 0; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    { apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; }; } ||
      { echo "slurm-up: apt could not install slurm-wlm munge; the Slurm test will skip"; exit 0; }
fi

install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') * 9 / 10 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=localhost
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MailProg=/bin/true
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && { echo "slurm-up: node idle"; exit 0; }
    sleep 0.5
done
echo "slurm-up: the node did not become idle in 30 s (see /var/log/slurm/); the Slurm test will skip"
exit 0
