"""One task per node of a SLURM job: calmrl's multi-node bring-up (`join_allocation`) and nothing else.

Node 0 prints, as one JSON line, the Ray nodes it sees and the address of the node each of one task per node
ran on (placed STRICT_SPREAD, so both nodes must take part), then exits, which stops the head; the other nodes
serve as Ray workers until then. Run by tests/slurm/test_real_slurm.py through sbatch + srun.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from calmrl.cluster.slurm import join_allocation


def main() -> None:
    run_dir = Path(sys.argv[1])
    if not join_allocation(OmegaConf.create({"cluster": {"name": "ray"}}), run_dir=run_dir, join_timeout_s=120):
        return  # a worker node: the head has gone
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
    nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    pg = placement_group([{"CPU": 1}] * len(nodes), strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=60)

    @ray.remote(num_cpus=1)
    def where() -> str:
        return ray.util.get_node_ip_address()

    ran_on = ray.get(
        [
            where.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)
            ).remote()
            for i in range(len(nodes))
        ]
    )
    report = {
        "nodes": nodes,
        "ran_on": sorted(ran_on),
        "auth_mode": os.environ.get("RAY_AUTH_MODE"),
        "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
    }
    print("BRINGUP " + json.dumps(report), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
