"""Independent PPO on MultiGrid: the flat baseline GMAH is compared against (de Witt et al., 2020).

Every agent runs the same policy/value network on its own observation (agent id included) and treats the
team reward as its own; there is no mixer and no hierarchy. One iteration plays `num_envs` episodes, then
`ppo_epochs` passes of clipped PPO over GAE advantages (gamma, lam).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from calmrl.algos.gmah import mlp
from calmrl.envs.multigrid import MultiGrid


def team_gae(rewards: torch.Tensor, values: torch.Tensor, live: torch.Tensor, gamma: float, lam: float):
    """GAE (Schulman et al., 2016) of every agent on the team reward, over lockstep episodes.

    rewards: [T, B] team reward after step t; values: [T, B, n] V(o_i) at step t; live: [T, B] the episode had
    not ended before step t. An episode ends after its last live step, so nothing bootstraps past it:
        delta_t = r_t + gamma * live_{t+1} * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * live_{t+1} * A_{t+1}
    Returns advantages [T, B, n], zero on steps that were not live. The loop runs over time only (T is an
    episode's length): each step is one tensor op over every episode and agent."""
    mask = live.float()[..., None].expand_as(values)  # [T, B, n]
    t_len = rewards.shape[0]
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(t_len)):
        next_live = mask[t + 1] if t + 1 < t_len else torch.zeros_like(last)
        next_v = values[t + 1] * next_live if t + 1 < t_len else torch.zeros_like(last)
        delta = rewards[t][:, None] + gamma * next_v - values[t]
        last = delta + gamma * lam * next_live * last
        adv[t] = last * mask[t]
    return adv


class IPPOAgent:
    def __init__(self, env: MultiGrid, cfg, seed: int):
        torch.manual_seed(seed)
        self.cfg = cfg
        self.policy = mlp(env.obs_dim, cfg.hidden, 5)
        self.value = mlp(env.obs_dim, cfg.hidden, 1)
        self.optimizer = torch.optim.Adam([*self.policy.parameters(), *self.value.parameters()], lr=cfg.lr)
        self.rng = torch.Generator().manual_seed(seed)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "value": self.value}

    def buffers(self) -> dict:
        return {}  # on-policy: nothing carries over between iterations

    def collect(self, env: MultiGrid, seed: int, it: int) -> dict[str, float]:
        """Iteration `it`'s training episodes, sampled from the policies, kept for the next `update`."""
        return self.play(env, seed, greedy=False, learn=True)

    def evaluate(self, env: MultiGrid, seed: int) -> dict[str, float]:
        """Greedy episodes (each agent's most likely action), nothing kept."""
        return self.play(env, seed, greedy=True, learn=False)

    @torch.no_grad()
    def play(self, env: MultiGrid, seed: int, greedy: bool, learn: bool) -> dict[str, float]:
        env.reset(seed)
        obs_l, act_l, logp_l, val_l, rew_l, live_l = [], [], [], [], [], []
        episode_return, steps = torch.zeros(env.num_envs), 0
        while not env.done.all():
            live = ~env.done
            obs = env.agent_obs()
            logits = self.policy(obs)
            if greedy:
                actions = logits.argmax(-1)
            else:
                actions = torch.multinomial(logits.softmax(-1).flatten(0, 1), 1, generator=self.rng).view(
                    live.shape[0], -1
                )
            out = env.step(actions)
            steps += int(live.sum())
            episode_return += out.reward
            if learn:
                obs_l.append(obs)
                act_l.append(actions)
                logp_l.append(F.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1))
                val_l.append(self.value(obs).squeeze(-1))
                rew_l.append(out.reward)
                live_l.append(live)
        if learn:
            self._rollout = [torch.stack(x) for x in (obs_l, act_l, logp_l, val_l, rew_l, live_l)]
        return {
            "success_rate": float((~env.dirt.any(1)).float().mean()),
            "episode_return": float(episode_return.mean()),
            "episode_len": float(env.t.float().mean()),
            "env_steps": float(steps),
        }

    def update(self) -> dict[str, float]:
        """PPO on the last `play(learn=True)` batch. Tensors are [T, B, n] (obs [T, B, n, O])."""
        cfg = self.cfg
        obs, actions, old_logp, values, rewards, live = self._rollout
        mask = live.float()[..., None].expand_as(actions).contiguous()  # [T, B, n]
        adv = team_gae(rewards, values, live, cfg.gamma, cfg.lam)
        returns = adv + values
        flat = mask.bool()
        obs, actions, old_logp, adv, returns = obs[flat], actions[flat], old_logp[flat], adv[flat], returns[flat]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        total = 0.0
        for _ in range(cfg.ppo_epochs):
            logits = self.policy(obs)
            logp_all = F.log_softmax(logits, -1)
            logp = logp_all.gather(-1, actions[:, None]).squeeze(-1)
            ratio = (logp - old_logp).exp()
            pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio) * adv).mean()
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            v_loss = F.mse_loss(self.value(obs).squeeze(-1), returns)
            loss = pg + 0.5 * v_loss - cfg.entropy_coef * entropy
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*self.policy.parameters(), *self.value.parameters()], 1.0)
            self.optimizer.step()
            total += float(loss.detach()) / cfg.ppo_epochs
        return {"loss/ppo": total}
