"""Env pools: step many environments, isolating the ones that fail.

`run_episodes` talks to envs only through a pool, which returns, for each env it was asked about, either
the result or the exception that stands in for it. One env's failure never reaches the others:

- `InlinePool` (env.pool=inline): envs live in this process; an exception from reset/step is caught.
  Right for cheap, well-behaved envs such as gridworld.
- `ProcessPool` (env.pool=process): every env lives in its own worker process (forked, so start-up is
  cheap), and a batch of steps runs in parallel. A call that raises, kills its worker, or takes longer than
  `timeout_s` becomes an exception for that env only; a dead or hung worker is killed and replaced by a
  fresh one before the next call. Right for heavy or fragile envs (ALFWorld's TextWorld, NLE).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from calmrl.envs.base import Observation, StepResult, TextEnv


class EnvTimeout(TimeoutError):
    pass


class EnvWorkerDied(RuntimeError):
    pass


class EnvPool(Protocol):
    """What `run_episodes` needs: batched reset/step returning a result or an exception per env."""

    def __len__(self) -> int: ...

    def reset(self, indices: Sequence[int], seeds: Sequence[int]) -> list[tuple[Observation, str] | BaseException]: ...

    def step(self, indices: Sequence[int], actions: Sequence[str]) -> list[StepResult | BaseException]: ...

    def close(self) -> None: ...


class InlinePool:
    """Envs in this process; failures are caught per env."""

    def __init__(self, envs: Sequence[TextEnv]):
        self.envs = list(envs)

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, indices: Sequence[int], seeds: Sequence[int]) -> list[tuple[Observation, str] | BaseException]:
        """(observation, task) per index, or the exception reset raised."""
        return [self._call(lambda e, s=s: (e.reset(s), e.task), i) for i, s in zip(indices, seeds, strict=True)]

    def step(self, indices: Sequence[int], actions: Sequence[str]) -> list[StepResult | BaseException]:
        return [self._call(lambda e, a=a: e.step(a), i) for i, a in zip(indices, actions, strict=True)]

    def _call(self, fn: Callable[[TextEnv], Any], i: int):
        try:
            return fn(self.envs[i])
        except Exception as exc:  # an env bug must not take the run down
            return exc

    def close(self) -> None:
        pass


def _serve(conn: Connection, make_env: Callable[[int], TextEnv], slot: int) -> None:
    """Worker loop: build env `slot`, then answer ("reset", seed) / ("step", action) until ("close", None)."""
    env = make_env(slot)
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:
            return
        if cmd == "close":
            return
        try:
            out = (env.reset(arg), env.task) if cmd == "reset" else env.step(arg)
            conn.send(("ok", out))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessPool:
    """One worker process per env, with a per-call timeout (see the module docstring).

    `make_env(slot)` builds the env of slot 0..n-1 inside its worker.
    """

    def __init__(self, make_env: Callable[[int], TextEnv], n: int, timeout_s: float = 60.0):
        self.make_env = make_env
        self.timeout_s = float(timeout_s)
        self._ctx = mp.get_context("fork")
        self._workers: list[tuple[Any, Connection] | None] = [None] * n

    def __len__(self) -> int:
        return len(self._workers)

    def reset(self, indices: Sequence[int], seeds: Sequence[int]) -> list[tuple[Observation, str] | BaseException]:
        return self._request(indices, "reset", seeds)

    def step(self, indices: Sequence[int], actions: Sequence[str]) -> list[StepResult | BaseException]:
        return self._request(indices, "step", actions)

    def _worker(self, i: int) -> Connection:
        if self._workers[i] is None:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_serve, args=(child, self.make_env, i), daemon=True)
            proc.start()
            child.close()
            self._workers[i] = (proc, parent)
        return self._workers[i][1]

    def _kill(self, i: int) -> None:
        proc, conn = self._workers[i]
        proc.kill()
        proc.join(timeout=5)
        conn.close()
        self._workers[i] = None  # replaced by a fresh worker on its next call

    def _request(self, indices: Sequence[int], cmd: str, args: Sequence[Any]) -> list[Any]:
        results: dict[int, Any] = {}
        pending: dict[Connection, int] = {}
        for i, arg in zip(indices, args, strict=True):
            conn = self._worker(i)
            try:
                conn.send((cmd, arg))
                pending[conn] = i
            except (BrokenPipeError, OSError) as exc:
                results[i] = EnvWorkerDied(f"env worker {i} is gone: {exc!r}")
                self._kill(i)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            ready = wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # every env still pending is hung
                for i in pending.values():
                    results[i] = EnvTimeout(f"env {i} did not answer {cmd} within {self.timeout_s:g} s")
                    self._kill(i)
                break
            for conn in ready:
                i = pending.pop(conn)
                try:
                    status, out = conn.recv()
                except (EOFError, OSError):
                    results[i] = EnvWorkerDied(f"env worker {i} died during {cmd}")
                    self._kill(i)
                    continue
                results[i] = out if status == "ok" else RuntimeError(out)
        return [results[i] for i in indices]

    def close(self) -> None:
        for i, worker in enumerate(self._workers):
            if worker is None:
                continue
            proc, conn = worker
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
            conn.close()
            self._workers[i] = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
