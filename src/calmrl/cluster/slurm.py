"""The job side of a SLURM submission: where am I in the allocation, and who starts what.

`calmrl train -m hydra/launcher=slurm hydra.launcher.nodes=N cluster=ray ...` (hydra-submitit-launcher) or
`sbatch scripts/slurm_train.sbatch ...` runs one task per node (tasks_per_node=1), and every task runs the
same `calmrl train`. `join_allocation` (called by the CLI before anything heavy) reads SLURM's environment:

- one node, or no SLURM at all (a shell, `hydra/launcher=submitit_local`): nothing to do, this process trains;
- several nodes with `cluster=ray`: node 0 starts a Ray head (`ray start --head`), exports its address
  (`RAY_ADDRESS`, and `cluster.address` when the cluster config has that key), waits until every node has
  joined, trains, and stops its head at exit; every other node joins the head (`ray start --address ...`)
  and serves Ray workers until the head goes away, then returns without training. Each node gives Ray the
  address its SLURM node name resolves to, and every node uses the same token authentication
  (`ray_auth_env`);
- every multi-node job also exports MASTER_ADDR / MASTER_PORT / NODE_RANK / NNODES (node 0's address, a port
  derived from the job id) for a torch.distributed / DeepSpeed world that spans the nodes.

Ports come from the job id, so every node computes the same ones without talking to the others, and two
jobs that share a node do not collide.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


class SlurmError(RuntimeError):
    """The allocation cannot run this job as configured; the message says what to change."""


# ---------------------------------------------------------------- node lists
def parse_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list, as `scontrol show hostnames` does.

    'node[01-03,07]' -> node01 node02 node03 node07; 'a[1-2]-ib,b3' -> a1-ib a2-ib b3; zero padding is kept;
    several bracket groups in one name expand as a product ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1 r2n2).
    """
    hosts: list[str] = []
    for name in _split_top_level(nodelist.strip()):
        hosts.extend(_expand(name))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in SLURM node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in SLURM node list {text!r}")
    parts.append(text[start:])
    return [p for p in (s.strip() for s in parts) if p]


def _expand(name: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", name)
    if match is None:
        return [name]
    head, tail = name[: match.start()], name[match.end() :]
    out = []
    for item in match.group(1).split(","):
        item = item.strip()
        if re.fullmatch(r"\d+", item):
            values = [item]
        elif m := re.fullmatch(r"(\d+)-(\d+)", item):
            lo, hi = m.group(1), m.group(2)
            if int(hi) < int(lo):
                raise ValueError(f"descending range {item!r} in SLURM node list {name!r}")
            width = len(lo)  # node[01-10]: keep the padding of the range's first number
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            raise ValueError(f"cannot read {item!r} in SLURM node list {name!r}")
        for v in values:
            out.extend(_expand(f"{head}{v}{tail}"))  # later bracket groups of the same name
    return out


def hostnames(nodelist: str, scontrol: str | None = None) -> list[str]:
    """SLURM's own expansion when `scontrol` is on PATH (it knows every format), else `parse_nodelist`."""
    scontrol = scontrol if scontrol is not None else shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return parse_nodelist(nodelist)


# ---------------------------------------------------------------- the allocation
@dataclass(frozen=True)
class SlurmWorld:
    job_id: str
    nodes: list[str]  # every node of the allocation, in SLURM's order; nodes[0] is the head
    node_rank: int  # SLURM_NODEID: this node's index
    proc_rank: int  # SLURM_PROCID: this task's global rank
    num_tasks: int  # SLURM_NTASKS
    cpus_per_task: int | None
    gpus_on_node: int | None

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def is_head(self) -> bool:
        return self.node_rank == 0

    def port(self, offset: int = 0) -> int:
        """A port every node derives alike from the job id (20000-29999 + offset)."""
        digits = re.sub(r"\D", "", self.job_id) or "0"
        return 20000 + int(digits) % 10000 + offset


def slurm_world(env: Mapping[str, str] | None = None, scontrol: str | None = None) -> SlurmWorld | None:
    """This task's place in its SLURM allocation, or None outside SLURM (or under submitit's local executor)."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    nodes = hostnames(nodelist, scontrol) if nodelist else [env.get("SLURMD_NODENAME") or socket.gethostname()]
    num_nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or len(nodes))
    if num_nodes != len(nodes):
        raise SlurmError(f"SLURM_JOB_NODELIST={nodelist!r} names {len(nodes)} nodes but SLURM says {num_nodes}")
    return SlurmWorld(
        job_id=job_id,
        nodes=nodes,
        node_rank=int(env.get("SLURM_NODEID", "0")),
        proc_rank=int(env.get("SLURM_PROCID", "0")),
        num_tasks=int(env.get("SLURM_NTASKS", str(num_nodes))),
        cpus_per_task=_int_or_none(env.get("SLURM_CPUS_PER_TASK")),
        gpus_on_node=_gpu_count(env),
    )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _gpu_count(env: Mapping[str, str]) -> int | None:
    """GPUs of this node: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE ('4' or 'a100:4')."""
    if n := _int_or_none(env.get("SLURM_GPUS_ON_NODE")):
        return n
    per_node = env.get("SLURM_GPUS_PER_NODE")
    return _int_or_none(per_node.rsplit(":", 1)[-1]) if per_node else None


# ---------------------------------------------------------------- what each node runs
def dist_env(world: SlurmWorld) -> dict[str, str]:
    """torch.distributed rendezvous of a world spanning the nodes (one launcher per node)."""
    return {
        "MASTER_ADDR": world.head,
        "MASTER_PORT": str(world.port(1)),
        "NODE_RANK": str(world.node_rank),
        "NNODES": str(world.num_nodes),
    }


def ray_address(world: SlurmWorld, head_ip: str | None = None) -> str:
    return f"{head_ip or world.head}:{world.port(0)}"


def ray_start_command(
    world: SlurmWorld, ray: str = "ray", head_ip: str | None = None, node_ip: str | None = None
) -> list[str]:
    """`ray start` for this node: the head on node 0, a worker that joins it elsewhere; both `--block`, so the
    process that started one stops it (and only it) by ending that command.
    `head_ip`: node 0's address; `node_ip`: this node's (Ray wants IPs; default: the host names). Without
    `--node-ip-address` Ray takes the address of the interface its default route uses, which on a host with
    several networks is not the one the node's name resolves to."""
    ip = node_ip or (head_ip if world.is_head else None) or world.nodes[world.node_rank]
    if world.is_head:
        # a temp dir of the job's own: Ray's default (/tmp/ray) records "the" cluster of the machine, which a later
        # plain ray.init() on the node would then try to join, long after this job has gone
        cmd = [ray, "start", "--head", f"--port={world.port(0)}", f"--temp-dir={job_temp_dir(world)}"]
    else:
        cmd = [ray, "start", f"--address={ray_address(world, head_ip)}"]
    # one dashboard agent per node; its default port (52365) is one for all, so two nodes sharing a host collide
    cmd += [f"--node-ip-address={ip}", f"--dashboard-agent-listen-port={world.port(2 + world.node_rank)}", "--block"]
    # Ray would count every core and GPU of the machine; the allocation may hold only part of it
    if world.cpus_per_task:
        cmd.append(f"--num-cpus={world.cpus_per_task}")
    if world.gpus_on_node is not None:
        cmd.append(f"--num-gpus={world.gpus_on_node}")
    return cmd


def job_temp_dir(world: SlurmWorld) -> str:
    """Ray's session directory root for this job (the joining nodes take the head's)."""
    return os.path.join(tempfile.gettempdir(), f"ray-calmrl-{world.job_id}")


def ray_cli() -> str | None:
    """The `ray` command of the running interpreter's environment (a venv run by its path is not on PATH), else
    the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("ray")


# ---------------------------------------------------------------- Ray's token authentication
def ray_auth_env(env: Mapping[str, str], token_path: Path) -> dict[str, str]:
    """The same authentication settings for every node of the job.

    Ray 2.60 turns token authentication on for `ray start --head` when it finds a token (~/.ray/auth_token,
    written by any earlier local `ray.init()`), but a joining `ray start --address` decides from RAY_AUTH_MODE
    alone; left to itself the head authenticates and the workers are refused. So calmrl sets the mode on every
    node: RAY_AUTH_MODE as given (`disabled` turns authentication off for the whole job), else `token`; the token
    is the user's (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) when given, else one of this job's own that node 0
    writes to `token_path` in the run directory, which every node of the job shares."""
    mode = (env.get("RAY_AUTH_MODE") or "token").lower()
    if mode not in ("token", "disabled"):
        raise SlurmError(f"RAY_AUTH_MODE={env['RAY_AUTH_MODE']!r}: Ray knows 'token' and 'disabled'")
    if mode == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    if env.get("RAY_AUTH_TOKEN"):
        return {"RAY_AUTH_MODE": "token"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": env.get("RAY_AUTH_TOKEN_PATH") or str(token_path)}


def write_job_token(path: Path) -> None:
    """A fresh random token, readable by its owner only (written before anyone can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, path)


def wait_for_nodes(expected: int, count_alive: Callable[[], int], timeout_s: float, poll_s: float = 2.0) -> int:
    """Poll until `count_alive()` reaches `expected`; SlurmError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    alive = 0
    while True:
        try:
            alive = count_alive()
        except Exception:  # the head's GCS may still be starting
            alive = 0
        if alive >= expected:
            return alive
        if time.monotonic() >= deadline:
            raise SlurmError(f"only {alive} of {expected} nodes joined the Ray cluster within {timeout_s:.0f} s")
        time.sleep(poll_s)


def _ray_alive_nodes(address: str) -> int:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="ERROR")
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def join_allocation(
    cfg, env: Mapping[str, str] | None = None, run_dir: Path | None = None, join_timeout_s: float = 600.0
) -> bool:
    """Set this task up inside its SLURM allocation; True when this process should run the trainer.
    `run_dir`: the job's run directory (shared by its nodes), where node 0 leaves the job's Ray token."""
    world = slurm_world(env)
    if world is None or world.num_nodes == 1:
        return True
    if world.num_tasks != world.num_nodes:
        raise SlurmError(
            f"{world.num_tasks} tasks on {world.num_nodes} nodes: calmrl runs one driver per node; "
            "set hydra.launcher.tasks_per_node=1 (sbatch: --ntasks-per-node=1)"
        )
    cluster = str(cfg.cluster.name)
    if cluster != "ray":
        raise SlurmError(
            f"this job has {world.num_nodes} nodes but cluster={cluster} runs in one process; "
            "pass cluster=ray to spread rollout workers and learners over the nodes, or hydra.launcher.nodes=1"
        )
    os.environ.update(dist_env(world))
    ray = ray_cli()
    if ray is None:
        raise SlurmError(
            f'cluster=ray across nodes needs the ray CLI (next to {sys.executable} or on PATH): pip install "calmrl[ray]"'
        )
    head_ip, node_ip = _resolve(world.head), _resolve(world.nodes[world.node_rank])
    address = ray_address(world, head_ip)
    token_path = Path(run_dir or Path.cwd()) / ".ray" / f"auth_token.{world.job_id}"
    os.environ.update(ray_auth_env(os.environ, token_path))
    if not world.is_head:
        _wait_for_port(head_ip, world.port(0), join_timeout_s)
        print(
            f"calmrl: node {world.node_rank} ({node_ip}) joins the Ray head at {address}", file=sys.stderr, flush=True
        )
        worker = subprocess.Popen(ray_start_command(world, ray, head_ip, node_ip), env=_ray_start_env())
        _serve_until_head_stops(worker, head_ip, world.port(0))
        return False
    if os.environ.get("RAY_AUTH_TOKEN_PATH") == str(token_path):
        write_job_token(token_path)  # before the head listens: a worker that reaches the port finds the token
        atexit.register(token_path.unlink, missing_ok=True)  # after _stop below (atexit runs last in, first out)
    head = subprocess.Popen(ray_start_command(world, ray, head_ip, node_ip), env=_ray_start_env())
    atexit.register(_stop, head)  # ends this job's Ray head, and with it the workers' `ray start --block`
    _wait_for_port(head_ip, world.port(0), join_timeout_s, alive=head)
    os.environ["RAY_ADDRESS"] = address
    if "address" in cfg.cluster:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.cluster.address = address
    wait_for_nodes(world.num_nodes, lambda: _ray_alive_nodes(address), join_timeout_s)
    import ray as ray_api

    ray_api.shutdown()  # the trainer's cluster=ray connects on its own, through RAY_ADDRESS
    print(f"calmrl: Ray head {address} with {world.num_nodes} nodes", file=sys.stderr, flush=True)
    return True


def _ray_start_env() -> dict[str, str]:
    """On SIGTERM `ray start --block` first drains its node, 30 s by default, for Ray Serve to move replicas away.
    A calmrl job stops its nodes when training has ended, with nothing left to move: no drain, unless asked."""
    return {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **os.environ}


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise SlurmError(f"cannot resolve SLURM node {host!r} to an address: {exc}") from None


def _serve_until_head_stops(worker: subprocess.Popen, head_ip: str, port: int, poll_s: float = 1.0) -> None:
    """Keep this node's Ray worker up while the head's port answers. Ray's own worker would notice a stopped head
    only after its GCS reconnect timeout (a minute), holding the job that long after training ended."""
    misses = 0
    while worker.poll() is None and misses < 3:
        misses = 0 if _port_open(head_ip, port) else misses + 1
        time.sleep(poll_s)
    _stop(worker)


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to `ray start --block`, which stops the Ray processes it started; SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_port(host: str, port: int, timeout_s: float, alive: subprocess.Popen | None = None) -> None:
    """Until `host:port` accepts connections; SlurmError after `timeout_s`, or as soon as `alive` has exited."""
    deadline = time.monotonic() + timeout_s
    while not _port_open(host, port):
        if alive is not None and alive.poll() is not None:
            raise SlurmError(f"`ray start --head` exited with {alive.returncode} (its output is above)")
        if time.monotonic() >= deadline:
            raise SlurmError(f"the Ray head {host}:{port} did not come up within {timeout_s:.0f} s")
        time.sleep(2)


def _port_open(host: str, port: int) -> bool:
    """Whether `host:port` accepts a TCP connection (within 5 s)."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False
