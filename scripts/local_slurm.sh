#!/usr/bin/env bash
# A real SLURM cluster of two nodes on this one machine, every daemon and all traffic on loopback: the fixture of
# the tests in tests/slurm (they start and stop it themselves), and a way to try `hydra/launcher=slurm` by hand.
#
#   scripts/local_slurm.sh install   # Debian's munge, slurmctld, slurmd, slurm-client (root or sudo; ~1 min)
#   scripts/local_slurm.sh up        # munged, slurmctld, one slurmd per node; waits until both nodes are idle
#   scripts/local_slurm.sh env       # the line to eval in a shell that will call sbatch/squeue: SLURM_CONF=...
#   scripts/local_slurm.sh down      # stops the daemons this script started, removes its /etc/hosts lines
#
# SLURM 22.05 as Debian builds it has MULTIPLE_SLURMD, so one host runs one `slurmd -N nodeK` per node; the node
# names resolve to loopback addresses of their own (node K to 127.0.0.1K) through /etc/hosts, which is how a
# job's processes find node 0, as DNS does on a real cluster. Nothing is written outside $CALMRL_SLURM_DIR but those /etc/hosts lines (marked, removed by `down`).
# Accounting is off (no slurmdbd): submitit's "Bypassing sacct error" at each poll comes from that, not from a job.
set -euo pipefail

DIR=${CALMRL_SLURM_DIR:-/tmp/calmrl-slurm}
NODES=${CALMRL_SLURM_NODES:-"node1 node2"}
CPUS=${CALMRL_SLURM_CPUS_PER_NODE:-2}    # declared, not measured (config_overrides): the tests oversubscribe
MEM_MB=${CALMRL_SLURM_MEM_MB:-8000}
CTLD_PORT=${CALMRL_SLURM_CTLD_PORT:-16817}
FIRST_SLURMD_PORT=${CALMRL_SLURM_SLURMD_PORT:-17001}
HOSTS_MARK="# calmrl local_slurm"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi

die() { echo "local_slurm: $*" >&2; exit 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    echo "local_slurm: munge and SLURM are installed"; return 0
  fi
  command -v apt-get >/dev/null || die "no apt-get here: install munge and SLURM (slurmctld, slurmd, sbatch) yourself"
  $sudo apt-get update -qq >/dev/null 2>&1 || echo "local_slurm: warning: apt-get update failed" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
  # the packages enable their systemd units; this fixture runs the daemons itself, in the foreground of nothing
  echo "local_slurm: installed $(slurmd -V)"
}

write_conf() {
  local host port=$FIRST_SLURMD_PORT node
  host=$(hostname -s)
  mkdir -p "$DIR"/{state,log,spool,munge}
  {
    echo "ClusterName=calmrl-local"
    echo "SlurmctldHost=${host}(127.0.0.1)"
    echo "SlurmctldPort=$CTLD_PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "AuthInfo=socket=$DIR/munge/munge.socket"
    echo "CredType=cred/munge"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmctldPidFile=$DIR/slurmctld.pid"
    echo "SlurmdPidFile=$DIR/slurmd.%n.pid"
    echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$DIR/log/slurmd.%n.log"
    echo "ProctrackType=proctrack/linuxproc"    # no cgroups in a container
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SlurmdParameters=config_overrides"    # trust the CPUs declared below over what slurmd counts
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "SchedulerType=sched/backfill"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "KillWait=10"
    echo "SlurmdTimeout=60"
    echo "MinJobAge=600"                        # keep finished jobs in squeue/scontrol for a while
    for node in $NODES; do
      echo "NodeName=$node NodeHostname=$host NodeAddr=$(node_ip "$node") Port=$port CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
      port=$((port + 1))
    done
    echo "PartitionName=debug Nodes=$(echo "$NODES" | tr ' ' ',') Default=YES MaxTime=INFINITE State=UP"
  } > "$DIR/slurm.conf"
}

# node K's address: 127.0.0.1K. Each node gets a loopback address of its own, as each host of a real cluster has
# its own IP: Ray keys its nodes by address, and replaces 127.0.0.1 itself by the host's external interface.
node_ip() {
  local k
  k=$(echo "$NODES" | tr ' ' '\n' | grep -nx "$1" | cut -d: -f1)
  echo "127.0.0.$((10 + k))"
}

map_node_names() {
  local node ip
  for node in $NODES; do
    ip=$(node_ip "$node")
    [ "$(getent hosts "$node" | awk '{print $1}')" = "$ip" ] && continue
    grep -q "^[0-9.]*[[:space:]]\+$node[[:space:]]" /etc/hosts 2>/dev/null \
      && die "/etc/hosts already names $node, with another address than $ip: remove that line or set CALMRL_SLURM_NODES"
    echo "$ip $node $HOSTS_MARK" | $sudo tee -a /etc/hosts >/dev/null || die "cannot write /etc/hosts to map $node to $ip"
  done
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  command -v slurmctld >/dev/null || die "SLURM is not installed (scripts/local_slurm.sh install)"
  write_conf
  map_node_names
  export SLURM_CONF=$DIR/slurm.conf
  if ! running "$DIR/munged.pid"; then
    # a key of this cluster's own, readable by root only: nothing else on the machine shares it
    [ -f "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 600 "$DIR/munge/munge.key"; }
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
  fi
  running "$DIR/slurmctld.pid" || slurmctld -i -f "$SLURM_CONF"   # -i: ignore state saved by an earlier run
  for node in $NODES; do
    running "$DIR/slurmd.$node.pid" || slurmd -N "$node" -f "$SLURM_CONF"
  done
  local deadline=$((SECONDS + ${CALMRL_SLURM_UP_TIMEOUT:-60})) idle
  while true; do
    idle=$(sinfo -h -N -t idle -o "%N" 2>/dev/null | sort -u | wc -l)
    [ "$idle" -ge "$(echo "$NODES" | wc -w)" ] && break
    if [ $SECONDS -ge $deadline ]; then
      sinfo -N -l >&2 || true
      tail -n 20 "$DIR"/log/*.log >&2 || true
      die "the nodes did not come up idle within ${CALMRL_SLURM_UP_TIMEOUT:-60} s (logs above, in $DIR/log)"
    fi
    sleep 1
  done
  echo "local_slurm: up: $(echo "$NODES" | wc -w) nodes; SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {
  local pidfile=$1 pid i
  running "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

down() {
  local node
  if [ -f "$DIR/slurm.conf" ] && running "$DIR/slurmctld.pid"; then
    SLURM_CONF=$DIR/slurm.conf scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  for node in $NODES; do stop_pidfile "$DIR/slurmd.$node.pid"; done
  stop_pidfile "$DIR/slurmctld.pid"
  stop_pidfile "$DIR/munged.pid"
  if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
    # /etc/hosts may be a bind mount (containers): rewrite it in place rather than replace the file
    grep -v "$HOSTS_MARK" /etc/hosts > "$DIR/hosts.kept" && $sudo cp "$DIR/hosts.kept" /etc/hosts || true
  fi
  echo "local_slurm: down"
}

case "${1:-}" in
  install) install_packages ;;
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
  *) echo "usage: $0 install|up|env|down" >&2; exit 2 ;;
esac
