"""A fake engine for the engine seam (execute.Engine): deterministic token streams from the prompt text, in-process,
with the harness's faults baked in, so that the pipeline's logic (plan, cache, score, verdicts, summary, reports,
history) is tested in seconds. It never pretends to test transformers: the real engine's tests do that.

Each request's text is `answers(prompt)` (default: a number drawn from the prompt's hash) as "... #### N", one token
per character (token id = code point), cut at max_new_tokens. Faults, as the job's engine configuration names them:
`perturb` shifts every 7th token by one (a corrupted engine: its run differs from its twin), `abort` finishes the
first request and then crashes (error class sigabrt), `hang` finishes the first request and then stalls (a timeout, error class hang); graph
faults (pre45323, coarse-key) do nothing, as on a machine without CUDA graphs. `stale_every=N` makes every run that
captures a CUDA graph (graphs on in a plan made with cuda=True) shift every Nth token: a stale graph, without a GPU.
Graph runs record the graphs they captured per path (`resolved.graphs_captured`, as the real worker does).

`decode_path=False` models a model that the engine gives no decode fast path (sliding-window layers): its probe
(`probe(model)`, what plan.prepare_jobs asks of each engine, as transformers_cb.probe answers it) says so, and a run
with graphs on the decode path captures none there (so a decode-only graph run is not stale).
"""

from __future__ import annotations

import hashlib
from typing import Callable

from .engine import Job
from .results import RunResult, Sample


def _hash_answer(prompt: str) -> str:
    return str(int(hashlib.sha256(prompt.encode()).hexdigest()[:4], 16) % 100)


class FakeEngine:
    def __init__(self, answers: Callable[[str], str] | dict[str, str] | None = None, stale_every: int | None = None,
                 decode_path: bool = True):
        self.answers = answers.get if isinstance(answers, dict) else (answers or _hash_answer)
        self.stale_every = stale_every
        self.decode_path = decode_path
        self.calls: list[str] = []  # the run keys of the jobs run, in order (tests count cache hits with it)

    def probe(self, model: dict | None = None) -> dict:
        """The engine's answer to the plan (transformers_cb.probe's keys): graphs per path can be expressed, and,
        given the model, whether it has a decode fast path."""
        out = {"transformers": "fake", "tuple_graphs": True}
        if model is not None:
            types = ["full_attention"] + ([] if self.decode_path else ["sliding_attention"])
            out["decode_path"] = {"available": self.decode_path, "layer_types": types,
                                  "blocked": [t for t in types if t == "sliding_attention"]}
        return out

    def graphs_captured(self, job: Job) -> dict[str, int]:
        varlen, decode = job.engine.cuda_graph
        return {"varlen": int(varlen), "decode": int(decode and self.decode_path)}

    def tokens(self, job: Job, prompt: str) -> list[int]:
        answer = self.answers(prompt)
        text = f"Adding it up gives {answer}.\n#### {answer}" if answer is not None else "I do not know."
        tokens = [ord(c) for c in text][:job.max_new_tokens]
        every = []
        if job.engine.fault == "perturb":
            every.append(7)
        if self.stale_every and any(self.graphs_captured(job).values()):
            every.append(self.stale_every)
        for n in every:
            tokens = [t + 1 if (i + 1) % n == 0 else t for i, t in enumerate(tokens)]
        return tokens

    def __call__(self, job: Job, progress: bool = True) -> RunResult:
        self.calls.append(job.key)
        samples = []
        for i, prompt in enumerate(job.prompts):
            tokens = self.tokens(job, prompt)
            samples.append(Sample(index=i, status="ok", token_ids=tokens, text="".join(map(chr, tokens))))
        meta = {"status": "done", "generate_s": 0.001 * sum(len(s.token_ids) for s in samples),
                "versions": {"transformers": "fake", "torch": "fake", "device": "fake"}}
        if any(job.engine.cuda_graph):
            meta["resolved"] = {"graphs_captured": self.graphs_captured(job)}
        if job.engine.fault in ("abort", "hang"):
            lost = [Sample(index=s.index, status="missing") for s in samples[1:]]
            if job.engine.fault == "abort":
                return RunResult(job.key, "crash", samples[:1] + lost, error_class="sigabrt",
                                 error="worker killed by SIGABRT", log_tail=["fake abort"], meta=meta)
            return RunResult(job.key, "timeout", samples[:1] + lost, error_class="hang",
                             error=f"no progress (no finished request, no engine step) for {job.limits().stall_s:.0f} s",
                             meta=meta)
        return RunResult(job.key, "ok", samples, meta=meta)
