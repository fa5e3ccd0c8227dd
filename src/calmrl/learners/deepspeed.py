"""DeepSpeed learner: the TorchLearner's policy objective, data-parallel over a world of ranks with ZeRO 2 or 3.

Every rank holds one `DeepSpeedLearner`. The driver sends each rank the same full batch (and the same
minibatch orders); a rank trains on its contiguous share of every minibatch. The objective is exactly
TorchLearner's: the token mean over the whole minibatch, built from per-micro-batch losses weighted by their
share of the minibatch's tokens (`policy_token_loss`, shared with torch.py). DeepSpeed averages gradients over
ranks, so each rank's loss is scaled by the world size to make the reduced gradient the full minibatch's.

Micro-batches per minibatch vary (the last minibatch is short), so gradient accumulation is unmanaged
(`managed_gradient_accumulation: false`): backward only accumulates, `step()` reduces, clips and updates. Every
rank runs the same number of forwards (ZeRO-3 gathers parameters inside forward, a collective): a rank whose
share has run out does a zero-weight forward/backward on a real row.

A step whose loss is not finite on any rank, or whose reduced gradient norm is not finite, is skipped on all
ranks and counted in `loss/skipped_steps`, as in TorchLearner.

Runs anywhere DeepSpeed does: on CUDA with NCCL, and on CPU with DeepSpeed's CPU accelerator
(DS_ACCELERATOR=cpu) and gloo, which is how CI tests it. The ranks are Ray actors under cluster=ray, or one rank
in the trainer's own process under cluster=local (`single_rank_learner`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from calmrl.learners.critic import clipped_value_loss
from calmrl.learners.torch import (
    POLICY_LOSS_PARTS,
    policy_logprobs,
    policy_token_loss,
    token_logprobs,
    train_minibatches,
    update_steps,
)


def deepspeed_config(learner_cfg, world_size: int) -> dict:
    """The DeepSpeed config dict for `learner=deepspeed` (conf/learner/deepspeed.yaml), world of `world_size` ranks."""
    stage = int(learner_cfg.zero_stage)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"learner.zero_stage must be 0, 1, 2 or 3, got {stage}")
    zero: dict = {"stage": stage}
    if stage >= 2:
        # overlap_comm overlaps the gradient reduce with backward: a GPU win, and a no-op risk on gloo
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=int(learner_cfg.bucket_size))
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=int(learner_cfg.bucket_size),
            stage3_param_persistence_threshold=0,  # partition every tensor, however small (the tiny policy's too)
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if learner_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if learner_cfg.offload_params:
        if stage != 3:
            raise ValueError("learner.offload_params needs learner.zero_stage=3 (only ZeRO-3 partitions the weights)")
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    micro = int(learner_cfg.micro_batch_size)
    return {
        # DeepSpeed validates train = micro x accumulation x world; with unmanaged accumulation the real
        # number of micro-batches per step is whatever update() runs.
        "train_batch_size": micro * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": float(learner_cfg.max_grad_norm),
        "bf16": {"enabled": str(learner_cfg.dtype) == "bfloat16", "check_grad_overflow": True},
        "zero_optimization": zero,
        # the client optimizer is torch's AdamW, the one TorchLearner uses (see DeepSpeedLearner.__init__)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join the learners' process group (gloo on CPU, nccl on CUDA) from explicit coordinates (Ray actors,
    spawned test processes), the way `deepspeed`/`torchrun` would set them in the environment."""
    import deepspeed

    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
    )
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, rank=rank, world_size=world_size, auto_mpi_discovery=False)


def single_rank_learner(model, algo_cfg, learner_cfg, ref_model=None, critic=None, state_dir: Path | None = None):
    """learner=deepspeed with cluster=local: a world of one rank in this process (gloo on a free loopback port;
    DeepSpeed's CPU accelerator when the model is on CPU). The wrapped module is `model` itself, so the trainer's
    HF generator samples from the weights DeepSpeed updates. `state_dir`: a checkpoint's `deepspeed/` to resume."""
    import socket

    if next(model.parameters()).device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed picks its accelerator
    if not torch.distributed.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        init_distributed(0, 1, "127.0.0.1", port)
    learner = DeepSpeedLearner(model, algo_cfg, learner_cfg, ref_model=ref_model, critic=critic)
    if state_dir is not None:
        learner.load_state(state_dir)
    return learner


class DeepSpeedLearner:
    """One rank of the learner world; every method is collective (call it on all ranks with the same arguments).

    With a `critic` (a `ValueModel`, for critic methods) the rank holds a second DeepSpeed engine for it, with its
    own AdamW at `algo.critic_lr` and the same ZeRO stage, trained after the policy on every minibatch with
    TorchLearner's clipped value loss."""

    def __init__(self, model, algo_cfg, learner_cfg, ref_model=None, critic=None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("DeepSpeedLearner needs the process group first: call init_distributed(...)")
        self.algo = algo_cfg
        self.cfg = learner_cfg
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.ds_config = deepspeed_config(learner_cfg, self.world)
        if learner_cfg.gradient_checkpointing:
            # non-reentrant: works with ZeRO-3's parameter hooks and needs no requires_grad on the inputs
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # torch's AdamW with TorchLearner's hyper-parameters: the same update rule on the same fp32 master
        # weights, so one step agrees with TorchLearner's to float rounding (tests/unit/learners/test_deepspeed.py)
        self.engine = self._engine(model, algo_cfg.lr)
        self.critic_engine = None if critic is None else self._engine(critic, algo_cfg.critic_lr)
        self.device = self.engine.device
        self.ref_model = ref_model.to(self.device) if ref_model is not None else None
        if algo_cfg.kl_coef > 0 and ref_model is None:
            raise ValueError("algo.kl_coef > 0 needs a reference model")

    def _engine(self, module, lr: float):
        import deepspeed

        optimizer = torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=self.cfg.weight_decay
        )
        engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
        return engine

    # ------------------------------------------------------------------ no-grad passes for the algo
    @torch.no_grad()
    def reference_logprobs(self, batch) -> torch.Tensor:
        """Reference-policy log-probs [N, L] (zero outside the response mask), from each rank's share of the rows
        (the reference is a plain, unpartitioned model on every rank). Collective: the shares are all-gathered."""
        if self.ref_model is None:
            raise ValueError("no reference model was loaded")
        return self._per_token(self.ref_model, batch)

    @torch.no_grad()
    def current_logprobs(self, batch) -> torch.Tensor:
        """The policy's log-probs [N, L] of the batch's tokens (zero outside the response mask), before the update;
        each rank runs its share of the rows. Collective."""
        self.engine.eval()
        return self._per_token(self.engine, batch)

    @torch.no_grad()
    def critic_values(self, batch) -> torch.Tensor:
        """Critic values [N, L] at every response token (zero elsewhere), before the update; each rank runs its
        share of the rows. Collective."""
        if self.critic_engine is None:
            raise ValueError("no critic was built")
        self.critic_engine.eval()
        return self._per_token(self.critic_engine, batch, values=True)

    def _per_token(self, model, batch, values: bool = False) -> torch.Tensor:
        """`model`'s token log-probs (or, `values`, its outputs) of the batch: [N, L], 0 off the response, on every
        rank. Each rank computes its contiguous share of the rows, micro-batch by micro-batch, and the shares are
        all-gathered, so the pass costs 1/world of the batch per rank."""
        import torch.distributed as dist

        n, width = batch.response_mask.shape
        per_rank = math.ceil(n / self.world)
        share = torch.zeros(per_rank, width, device=self.device)
        for rows, weight in self._micro_batches_of_my_share(n):
            ids, attn, mask = self._rows(batch, rows)
            per_token = model(ids, attn) if values else token_logprobs(model, ids, attn)
            if weight:  # (a zero-weight row: this rank's share ran out, its forward keeps ZeRO-3's gathers in step)
                share[rows - self.rank * per_rank, : ids.shape[1]] = per_token.float() * mask
        shares = [torch.empty_like(share) for _ in range(self.world)]
        dist.all_gather(shares, share)
        return torch.cat(shares)[:n].cpu().to(batch.response_mask.dtype)

    def _micro_batches_of_my_share(self, n: int) -> list[tuple[torch.Tensor, float]]:
        """(row indices, weight) of each micro-batch of this rank's contiguous share of n rows. Every rank gets the
        same number of micro-batches (ZeRO-3 gathers parameters inside each forward, a collective): a rank whose
        share has run out gets row 0 with weight 0."""
        per_rank = math.ceil(n / self.world)
        mine = torch.arange(self.rank * per_rank, min((self.rank + 1) * per_rank, n))
        micro = int(self.cfg.micro_batch_size)
        out = []
        for k in range(max(math.ceil(per_rank / micro), 1)):
            rows = mine[k * micro : (k + 1) * micro]
            out.append((rows, 1.0) if len(rows) else (torch.arange(0, 1), 0.0))
        return out

    def _rows(self, batch, rows: torch.Tensor):
        width = int(batch.attention_mask[rows].sum(dim=1).max())
        return (
            batch.input_ids[rows, :width].to(self.device),
            batch.attention_mask[rows, :width].to(self.device),
            batch.response_mask[rows, :width].to(self.device),
        )

    # ------------------------------------------------------------------ training
    def update(self, batch, train_policy: bool = True, orders: list[torch.Tensor] | None = None) -> dict[str, float]:
        """`algo.ppo_epochs` passes over the batch in minibatches of `algo.minibatch_size` rows, one optimizer step
        each (policy, then critic; `train_policy=False`: the critic only). `orders` (one permutation of the rows per
        epoch) must be the same on every rank; without it each rank draws `torch.randperm` from its global RNG,
        which the caller must have seeded identically."""
        if orders is None:
            orders = [torch.randperm(len(batch)) for _ in range(self.algo.ppo_epochs)]
        critic_step = self._critic_step if self.critic_engine is not None else None
        steps = update_steps(batch, train_policy, self._policy_step, critic_step)
        self.engine.train()
        return train_minibatches(batch, self.algo, steps, orders)

    def _policy_step(self, mb) -> dict[str, float] | None:
        def loss(engine, rows, ids, attn, mask):
            width = ids.shape[1]
            adv = mb.advantages[rows, :width].to(self.device)
            old = mb.old_logprobs[rows, :width].to(self.device)
            logp, entropy = policy_logprobs(engine, self.algo, ids, attn)
            ref = None
            if self.algo.kl_coef > 0:
                with torch.no_grad():
                    ref = token_logprobs(self.ref_model, ids, attn)
            weights = None if mb.loss_weights is None else mb.loss_weights[rows, :width].to(self.device)
            return policy_token_loss(self.algo, logp, old, adv, mask, ref, entropy, weights)

        return self._sharded_step(self.engine, mb, loss, POLICY_LOSS_PARTS, "loss/grad_norm")

    def _critic_step(self, mb) -> dict[str, float] | None:
        def loss(engine, rows, ids, attn, mask):
            width = ids.shape[1]
            old = mb.values[rows, :width].to(self.device)
            target = mb.returns[rows, :width].to(self.device)
            value_loss = clipped_value_loss(engine(ids, attn), old, target, mask, self.algo.value_clip)
            return value_loss, {"critic/value_loss": value_loss.detach()}

        self.critic_engine.train()
        return self._sharded_step(self.critic_engine, mb, loss, ("critic/value_loss",), "critic/grad_norm")

    def _sharded_step(self, engine, mb, micro_loss, names: tuple[str, ...], grad_norm_key: str):
        """One optimizer step of `engine` on minibatch `mb`, this rank training on its contiguous share of the rows.
        `micro_loss(engine, rows, ids, attn, mask) -> (loss, parts)` is a micro-batch's token-mean loss; `parts`
        (keyed by `names`) are summed with the same weights over micro-batches and ranks. None: skipped."""
        import torch.distributed as dist

        num_tokens = mb.response_mask.sum().clamp(min=1.0)  # the whole minibatch's, so shares add up across ranks
        sums = torch.zeros(len(names), dtype=torch.float64)
        engine.zero_grad()
        for rows, weight in self._micro_batches_of_my_share(len(mb)):  # weight 0: a pass that keeps ranks in step
            ids, attn, mask = self._rows(mb, rows)
            loss, parts = micro_loss(engine, rows, ids, attn, mask)
            share = weight * float(mask.sum()) / float(num_tokens)
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0])
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank must take the same branch
            if bad.item() > 0:
                engine.zero_grad()
                return None
            # DeepSpeed averages gradients over ranks; x world makes the result the sum of the ranks' shares
            engine.backward(loss * (share * self.world), scale_wrt_gas=False)
            for i, name in enumerate(names):
                sums[i] += float(parts[name]) * share
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(grad_norm):  # DeepSpeed found the overflow and skipped the update on every rank
            return None
        dist.all_reduce(sums)
        return {**{name: float(sums[i]) for i, name in enumerate(names)}, grad_norm_key: grad_norm}

    def step_on_losses(self, micro_losses) -> dict[str, float] | None:
        """One policy optimizer step on losses computed outside the learner through `train_module` (the offline
        preference losses of `calmrl.preference`), as TorchLearner.step_on_losses: `micro_losses` yields
        (loss, metrics) per micro-batch, each loss already its share of the minibatch loss, and the same number of
        micro-batches on every rank (each rank's rows are its share; metrics are summed over micro-batches and
        ranks). A non-finite loss on any rank, or a non-finite gradient norm, skips the step (returns None)."""
        import torch.distributed as dist

        self.engine.train()
        self.engine.zero_grad()
        sums: dict[str, float] = {}
        for loss, metrics in micro_losses:
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0])
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank must take the same branch
            if bad.item() > 0:
                self.engine.zero_grad()
                return None
            # DeepSpeed averages gradients over ranks; x world makes the result the sum of the ranks' shares
            self.engine.backward(loss * self.world, scale_wrt_gas=False)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(grad_norm):
            return None
        names = sorted(sums)
        reduced = torch.tensor([sums[k] for k in names], dtype=torch.float64)
        dist.all_reduce(reduced)
        return {**{k: float(reduced[i]) for i, k in enumerate(names)}, "loss/grad_norm": grad_norm}

    @property
    def train_module(self):
        """What a loss computed outside the learner runs its forward through (the DeepSpeed engine)."""
        return self.engine

    # ------------------------------------------------------------------ weights and checkpoints
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The policy's full (unpartitioned) weights as CPU tensors on rank 0, None on the others. Under ZeRO-3 the
        parameters are gathered one at a time, so no rank ever holds more than one extra full tensor."""
        return self._gathered_state(self.engine.module)

    def critic_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The critic's full weights on rank 0 (None on the others, and without a critic), for the checkpoint's
        `critic` entry. Collective under ZeRO-3."""
        return None if self.critic_engine is None else self._gathered_state(self.critic_engine.module)

    def _gathered_state(self, module) -> dict[str, torch.Tensor] | None:
        import deepspeed

        out: dict[str, torch.Tensor] | None = {} if self.rank == 0 else None
        if int(self.cfg.zero_stage) == 3:
            # the keys of state_dict() (tied weights under each name, persistent buffers only), filled from
            # the gathered parameters; remove_duplicate=False names a tied parameter under every key
            params = dict(module.named_parameters(remove_duplicate=False))
            for name, tensor in module.state_dict().items():
                param = params.get(name)
                if param is None:  # a buffer: never partitioned
                    if out is not None:
                        out[name] = tensor.detach().cpu().clone()
                    continue
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if out is not None:
                        out[name] = param.detach().cpu().clone()
            return out
        if out is None:
            return None
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Full weights as an HF `save_pretrained` directory (safetensors), loadable by transformers and vLLM.
        Collective; rank 0 writes."""
        state = self.full_state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(directory, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(directory)

    def save_state(self, directory: str | Path) -> None:
        """DeepSpeed's own checkpoint (each rank's optimizer/gradient partitions; the critic's under tag `critic`)
        under `directory`. Collective; every rank writes its shard, so `directory` must be on a filesystem all ranks
        see."""
        for tag, engine in self._engines():
            engine.save_checkpoint(str(directory), tag=tag, save_latest=False)

    def load_state(self, directory: str | Path) -> None:
        """Restore weights and optimizer partitions written by `save_state` (same world size and ZeRO stage)."""
        for tag, engine in self._engines():
            path, _ = engine.load_checkpoint(
                str(directory),
                tag=tag,
                load_module_strict=True,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed state under {directory}/{tag}")

    def _engines(self):
        """(checkpoint tag, engine) of each model this rank trains."""
        return [("state", self.engine)] + ([("critic", self.critic_engine)] if self.critic_engine is not None else [])

    def optimizer_state(self) -> None:
        """No single-file optimizer state: DeepSpeed's partitions are saved by `save_state`."""
        return None
