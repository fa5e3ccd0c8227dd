"""The SLURM job side: node lists, the allocation read from SLURM's env vars, and what each node starts."""

from __future__ import annotations

import stat
import sys

import pytest
from omegaconf import OmegaConf

from calmrl.cluster.slurm import (
    SlurmError,
    dist_env,
    hostnames,
    job_temp_dir,
    join_allocation,
    parse_nodelist,
    ray_auth_env,
    ray_cli,
    ray_start_command,
    slurm_world,
    wait_for_nodes,
    write_job_token,
)


@pytest.mark.parametrize(
    "nodelist, expected",
    [
        ("node01", ["node01"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),  # padding of the range's start
        ("a[1-2]-ib,b3", ["a1-ib", "a2-ib", "b3"]),
        ("login1,cn[5,9],x", ["login1", "cn5", "cn9", "x"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("dgx-h100-[001-002]", ["dgx-h100-001", "dgx-h100-002"]),
    ],
)
def test_parse_nodelist(nodelist, expected):
    assert parse_nodelist(nodelist) == expected


@pytest.mark.parametrize("bad", ["node[1-3", "node1-3]", "node[3-1]", "node[a-b]"])
def test_parse_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_nodelist(bad)


def test_hostnames_uses_scontrol_and_falls_back_to_the_parser(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "n1\\nn2\\n"\n')
    fake.chmod(0o755)
    assert hostnames("whatever[1-9]", scontrol=str(fake)) == ["n1", "n2"]
    assert hostnames("n[3-4]", scontrol=str(tmp_path / "missing")) == ["n3", "n4"]
    assert hostnames("n[3-4]", scontrol="") == ["n3", "n4"]


ENV = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "node[01-03,07]",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_NODEID": "2",
    "SLURM_PROCID": "2",
    "SLURM_NTASKS": "4",
    "SLURM_CPUS_PER_TASK": "16",
    "SLURM_GPUS_PER_NODE": "h100:8",
}


def test_slurm_world_from_env():
    w = slurm_world(ENV, scontrol="")
    assert w.nodes == ["node01", "node02", "node03", "node07"] and w.num_nodes == 4
    assert (w.head, w.node_rank, w.proc_rank, w.num_tasks) == ("node01", 2, 2, 4)
    assert (w.cpus_per_task, w.gpus_on_node) == (16, 8)
    assert not w.is_head
    assert 20000 <= w.port() < 30000 and w.port(1) == w.port() + 1
    # every node derives the same ports from the job id alone
    assert slurm_world({**ENV, "SLURM_NODEID": "0", "SLURM_PROCID": "0"}, scontrol="").port() == w.port()
    assert slurm_world({**ENV, "SLURM_JOB_ID": "123457"}, scontrol="").port() != w.port()


def test_outside_slurm_there_is_no_world():
    assert slurm_world({}, scontrol="") is None
    assert slurm_world({"SUBMITIT_LOCAL_JOB_ID": "1"}, scontrol="") is None  # submitit's local executor


def test_node_count_mismatch_is_an_error():
    with pytest.raises(SlurmError, match="names 4 nodes but SLURM says 3"):
        slurm_world({**ENV, "SLURM_JOB_NUM_NODES": "3"}, scontrol="")


def test_dist_env_and_ray_commands():
    worker = slurm_world(ENV, scontrol="")
    head = slurm_world({**ENV, "SLURM_NODEID": "0", "SLURM_PROCID": "0"}, scontrol="")
    env = dist_env(worker)
    assert env == {"MASTER_ADDR": "node01", "MASTER_PORT": str(worker.port(1)), "NODE_RANK": "2", "NNODES": "4"}
    port = head.port()
    assert ray_start_command(head, "ray", head_ip="10.0.0.1") == [
        "ray", "start", "--head", f"--port={port}", f"--temp-dir={job_temp_dir(head)}", "--node-ip-address=10.0.0.1",
        f"--dashboard-agent-listen-port={head.port(2)}", "--block", "--num-cpus=16", "--num-gpus=8",
    ]  # fmt: skip
    assert ray_start_command(worker, "ray", head_ip="10.0.0.1", node_ip="10.0.0.3") == [
        "ray", "start", f"--address=10.0.0.1:{port}", "--node-ip-address=10.0.0.3",
        f"--dashboard-agent-listen-port={worker.port(4)}", "--block", "--num-cpus=16", "--num-gpus=8",
    ]  # fmt: skip
    # without an IP a worker names itself by its SLURM node name, never by the head's address
    assert "--node-ip-address=node03" in ray_start_command(worker, "ray", head_ip="10.0.0.1")


def test_ray_cli_is_the_one_beside_the_interpreter_before_path(tmp_path, monkeypatch):
    venv_bin, elsewhere = tmp_path / "venv" / "bin", tmp_path / "elsewhere"
    for d in (venv_bin, elsewhere):
        d.mkdir(parents=True)
        (d / "ray").write_text("#!/bin/sh\n")
        (d / "ray").chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    assert ray_cli() == str(venv_bin / "ray")  # a venv run by its path, not activated
    (venv_bin / "ray").unlink()
    assert ray_cli() == str(elsewhere / "ray")
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert ray_cli() is None


def test_ray_auth_env_is_one_setting_for_every_node(tmp_path):
    job_token = tmp_path / ".ray" / "auth_token.7"
    # unset: token authentication with this job's own token, on every node alike
    assert ray_auth_env({}, job_token) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(job_token)}
    assert ray_auth_env({"RAY_AUTH_MODE": "disabled"}, job_token) == {"RAY_AUTH_MODE": "disabled"}
    assert ray_auth_env({"RAY_AUTH_MODE": "DISABLED", "RAY_AUTH_TOKEN": "x"}, job_token) == {
        "RAY_AUTH_MODE": "disabled"
    }
    # the user's own token wins over the job's
    assert ray_auth_env({"RAY_AUTH_TOKEN": "secret"}, job_token) == {"RAY_AUTH_MODE": "token"}
    mine = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/shared/token"}
    assert ray_auth_env(mine, job_token) == mine
    with pytest.raises(SlurmError, match="'token' and 'disabled'"):
        ray_auth_env({"RAY_AUTH_MODE": "tokens"}, job_token)


def test_write_job_token_is_private_and_fresh(tmp_path):
    path = tmp_path / "run" / ".ray" / "auth_token.7"
    write_job_token(path)
    first = path.read_text()
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_job_token(path)  # a resubmitted job: a new token over the old one
    assert path.read_text() != first and stat.S_IMODE(path.stat().st_mode) == 0o600


def cfg(cluster="local"):
    return OmegaConf.create({"cluster": {"name": cluster}})


def test_join_allocation_is_a_no_op_outside_slurm_and_on_one_node(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert join_allocation(cfg(), env={}) is True
    one = {**ENV, "SLURM_JOB_NODELIST": "node07", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_NTASKS": "1"}
    assert join_allocation(cfg(), env=one) is True
    import os

    assert "MASTER_ADDR" not in os.environ  # nothing exported for a single node


def test_join_allocation_refuses_what_cannot_span_nodes():
    with pytest.raises(SlurmError, match="pass cluster=ray"):
        join_allocation(cfg("local"), env=ENV)
    with pytest.raises(SlurmError, match="tasks_per_node=1"):
        join_allocation(cfg("ray"), env={**ENV, "SLURM_NTASKS": "8"})


def test_wait_for_nodes_polls_until_all_joined_or_times_out():
    counts = iter([0, 1, RuntimeError("gcs starting"), 3, 4])

    def alive():
        c = next(counts)
        if isinstance(c, Exception):
            raise c
        return c

    assert wait_for_nodes(4, alive, timeout_s=10, poll_s=0) == 4
    with pytest.raises(SlurmError, match="only 1 of 2 nodes joined"):
        wait_for_nodes(2, lambda: 1, timeout_s=0.05, poll_s=0.01)
