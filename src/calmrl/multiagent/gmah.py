"""GMAH training on MultiGrid: hierarchical agents, dynamic subgoals, a monotonic mixer (see algos/gmah.py).

One iteration plays `num_envs` episodes in lockstep:

    every env step:
        envs that must re-plan: each agent picks a subgoal cell, eps-greedy on Q_h(o_i, .)
        each agent acts eps-greedy on Q_l(p_i, g_i, .); the env steps; option returns accumulate
        an option ends (for the whole team of that env) when an agent reaches its subgoal, a subgoal cell
        that was dirty is cleaned by someone else (the environment changed: dynamic goal generation),
        `option_len` steps pass, or the episode ends -> one option transition goes to the high-level buffer
    then `updates_per_iter` gradient steps on the QMIX loss and the hindsight-relabelled low-level loss.
"""

from __future__ import annotations

import copy

import torch

from calmrl.algos.gmah import GMAHNetworks, high_level_td_loss, low_level_td_loss, soft_update
from calmrl.envs.multigrid import MultiGrid
from calmrl.multiagent.replay import TensorReplay


class GMAHAgent:
    def __init__(self, env: MultiGrid, cfg, seed: int):
        torch.manual_seed(seed)
        self.cfg = cfg
        self.nets = GMAHNetworks(
            env.obs_dim, env.state_dim, env.cells, env.n, hidden=cfg.hidden, mixer_embed=cfg.mixer_embed
        )
        self.target = copy.deepcopy(self.nets).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=cfg.lr)
        self.high_buffer = TensorReplay(cfg.buffer_size)
        self.low_buffer = TensorReplay(cfg.buffer_size)
        self.rng = torch.Generator().manual_seed(seed)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"nets": self.nets, "target": self.target}

    def buffers(self) -> dict[str, TensorReplay]:
        """Replay buffers the checkpoint keeps, so a resumed run learns from the same data."""
        return {"high_buffer": self.high_buffer, "low_buffer": self.low_buffer}

    # ---------------------------------------------------------------- acting
    def collect(self, env: MultiGrid, seed: int, it: int) -> dict[str, float]:
        """Iteration `it`'s training episodes, epsilon-greedy at the schedule's epsilon, into the replay buffers."""
        eps = self.epsilon(it)
        return {**self.play(env, seed, eps=eps, learn=True), "epsilon": eps}

    def evaluate(self, env: MultiGrid, seed: int) -> dict[str, float]:
        """Greedy episodes (epsilon 0), nothing stored."""
        return self.play(env, seed, eps=0.0, learn=False)

    def epsilon(self, it: int) -> float:
        frac = min(it / max(self.cfg.eps_decay_iters, 1), 1.0)
        return self.cfg.eps_start + frac * (self.cfg.eps_end - self.cfg.eps_start)

    def _eps_greedy(self, q: torch.Tensor, eps: float) -> torch.Tensor:
        greedy = q.argmax(-1)
        if eps <= 0:
            return greedy
        rand = torch.randint(0, q.shape[-1], greedy.shape, generator=self.rng)
        explore = torch.rand(greedy.shape, generator=self.rng) < eps
        return torch.where(explore, rand, greedy)

    @torch.no_grad()
    def play(self, env: MultiGrid, seed: int, eps: float, learn: bool) -> dict[str, float]:
        """One lockstep batch of episodes; with `learn`, transitions go to the replay buffers."""
        cfg = self.cfg
        env.reset(seed)
        b, n = env.num_envs, env.n
        goals = torch.zeros(b, n, dtype=torch.long)
        goal_was_dirty = torch.zeros(b, n, dtype=torch.bool)
        replan = torch.ones(b, dtype=torch.bool)
        start_obs, start_state = env.agent_obs(), env.state()
        ret, disc, tau = torch.zeros(b), torch.ones(b), torch.zeros(b, dtype=torch.long)
        episode_return, options = torch.zeros(b), 0
        steps = 0
        while not env.done.all():
            live = ~env.done
            if replan.any():
                obs = env.agent_obs()
                new_goals = self._eps_greedy(self.nets.high(obs), eps)
                goals = torch.where(replan[:, None], new_goals, goals)
                goal_was_dirty = torch.where(replan[:, None], env.dirt.gather(1, goals), goal_was_dirty)
                start_obs = torch.where(replan[:, None, None], obs, start_obs)
                start_state = torch.where(replan[:, None], env.state(), start_state)
                ret = torch.where(replan, torch.zeros(()), ret)
                disc = torch.where(replan, torch.ones(()), disc)
                tau = torch.where(replan, torch.zeros((), dtype=torch.long), tau)
                options += int((replan & live).sum())
            pos = env.pos.clone()
            actions = self._eps_greedy(self.nets.low_q(pos, goals), eps)
            out = env.step(actions)
            steps += int(live.sum())
            ret = ret + disc * out.reward
            disc = disc * cfg.gamma
            tau = tau + live.long()
            episode_return += out.reward
            if learn:
                self.low_buffer.add(
                    pos=pos[live].flatten(), action=actions[live].flatten(), next_pos=env.pos[live].flatten()
                )
            reached = (env.pos == goals).any(1)
            goal_cleaned = (goal_was_dirty & ~env.dirt.gather(1, goals)).any(1)
            ends = live & (reached | goal_cleaned | (tau >= cfg.option_len) | out.done)
            if learn and ends.any():
                self.high_buffer.add(
                    obs=start_obs[ends],
                    state=start_state[ends],
                    goals=goals[ends],
                    ret=ret[ends],
                    discount=disc[ends],
                    next_obs=env.agent_obs()[ends],
                    next_state=env.state()[ends],
                    done=out.done[ends],
                )
            replan = ends & ~out.done
        success = ~env.dirt.any(1)
        return {
            "success_rate": float(success.float().mean()),
            "episode_return": float(episode_return.mean()),
            "episode_len": float(env.t.float().mean()),
            "options_per_episode": options / b,
            "env_steps": float(steps),
        }

    # ---------------------------------------------------------------- learning
    def update(self) -> dict[str, float]:
        cfg = self.cfg
        if len(self.high_buffer) < cfg.batch_size or len(self.low_buffer) < cfg.batch_size:
            return {}
        high_loss = low_loss = 0.0
        for _ in range(cfg.updates_per_iter):
            h = self.high_buffer.sample(cfg.batch_size, self.rng)
            lo = self.low_buffer.sample(cfg.batch_size, self.rng)
            # hindsight relabelling: half the goals are the cell actually reached, half are random cells
            random_goal = torch.randint(0, self.nets.cells, lo["pos"].shape, generator=self.rng)
            use_reached = torch.rand(lo["pos"].shape, generator=self.rng) < 0.5
            goal = torch.where(use_reached, lo["next_pos"], random_goal)
            lh = high_level_td_loss(
                self.nets,
                self.target,
                h["obs"],
                h["state"],
                h["goals"],
                h["ret"],
                h["discount"],
                h["next_obs"],
                h["next_state"],
                h["done"],
            )
            ll = low_level_td_loss(
                self.nets, self.target, lo["pos"], lo["action"], lo["next_pos"], goal, cfg.low_gamma, cfg.low_step_cost
            )
            self.optimizer.zero_grad()
            (lh + ll).backward()
            torch.nn.utils.clip_grad_norm_(self.nets.parameters(), 10.0)
            self.optimizer.step()
            soft_update(self.target, self.nets, cfg.target_tau)
            high_loss += lh.item() / cfg.updates_per_iter
            low_loss += ll.item() / cfg.updates_per_iter
        return {"loss/high_td": high_loss, "loss/low_td": low_loss}
