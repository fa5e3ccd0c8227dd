"""The judge schema: what answers the calm shaper's subgoal questions (`shaper.judge`) and the 20-questions
oracle (`env.judge`), and the checks of its ranges."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from omegaconf import DictConfig

from calmrl.errors import require
from calmrl.schemas.common import Device, DType


class JudgeBackend(StrEnum):
    oracle = "oracle"  # exact labels from a built-in env's rules (no LLM)
    hf = "hf"  # a local causal LM through transformers (`model` = a save_pretrained directory)
    openai = "openai"  # an OpenAI-compatible endpoint, e.g. a vLLM server (`base_url`, `model`)


class JudgeApi(StrEnum):
    completions = "completions"  # /completions: a whole batch of prompts in one request
    chat = "chat"  # /chat/completions: one request per prompt, `concurrency` at a time


class OnError(StrEnum):
    zero = "zero"  # a failed answer counts as "nothing achieved": warn, count it in judge/failures, go on
    fail = "fail"  # stop with an error naming the endpoint and what to change


@dataclass
class JudgeConfig:
    backend: JudgeBackend = JudgeBackend.oracle
    model: str | None = None  # openai: the served model name; hf: a save_pretrained directory
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: the endpoint, up to and including /v1
    api: JudgeApi = JudgeApi.completions
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the env variable holding the key (never the key)
    timeout_s: float = 30.0  # per request
    max_retries: int = 3  # retries after a timeout / connection error / 429 / 5xx, waiting backoff_s * 2^k
    backoff_s: float = 0.5
    batch_size: int = 32  # prompts per backend call (one /completions request, or one hf generate)
    concurrency: int = 8  # api=chat: requests in flight
    max_new_tokens: int = 64
    temperature: float = 0.0
    dtype: DType = DType.float32  # hf
    device: Device = Device.auto  # hf
    trust_remote_code: bool = False  # hf
    chat: bool = False  # hf: wrap each prompt in the tokenizer's chat template
    cache: bool = True  # answers persist on disk, keyed by (backend, model, params, prompt)
    cache_path: str | None = None  # None = <run dir>/judge_cache.sqlite
    on_error: OnError = OnError.zero


def validate_judge(judge: DictConfig, key: str) -> None:
    """Ranges of a judge config found at `key` (e.g. shaper.judge)."""
    require(judge.timeout_s > 0, f"{key}.timeout_s must be > 0, got {judge.timeout_s}")
    require(judge.max_retries >= 0, f"{key}.max_retries must be >= 0, got {judge.max_retries}")
    require(judge.backoff_s >= 0, f"{key}.backoff_s must be >= 0, got {judge.backoff_s}")
    require(judge.batch_size >= 1, f"{key}.batch_size must be >= 1, got {judge.batch_size}")
    require(judge.concurrency >= 1, f"{key}.concurrency must be >= 1, got {judge.concurrency}")
    require(judge.max_new_tokens >= 1, f"{key}.max_new_tokens must be >= 1, got {judge.max_new_tokens}")
    require(judge.temperature >= 0, f"{key}.temperature must be >= 0, got {judge.temperature}")
    if judge.backend == "openai":
        require(bool(judge.model), f"{key}.backend=openai needs {key}.model=<the model name the server serves>")
        require(
            str(judge.base_url).startswith(("http://", "https://")),
            f"{key}.base_url must start with http:// or https://, got {judge.base_url!r}",
        )
    if judge.backend == "hf":
        require(
            bool(judge.model) and (Path(judge.model).expanduser() / "config.json").is_file(),
            f"{key}.backend=hf needs {key}.model=<a save_pretrained directory with config.json>, got {judge.model}",
        )
