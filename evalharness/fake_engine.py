"""A fake engine for the engine seam (execute.Engine): deterministic token streams from the prompt text, in-process,
with the harness's faults baked in, so that the pipeline's logic (plan, cache, score, verdicts, summary, reports,
history) is tested in seconds. It never pretends to test transformers: the real engine's tests do that.

Each request's text is `answers(prompt)` (default: a number drawn from the prompt's hash) as "... #### N", one token
per character (token id = code point), cut at max_new_tokens. Faults, as the job's engine configuration names them:
`perturb` shifts every 7th token by one (a corrupted engine: its run differs from its twin), `abort` finishes the
first request and then crashes (error class sigabrt), `hang` finishes the first request and then stalls (a timeout, error class hang); graph
faults (pre45323, coarse-key) do nothing, as on a machine without CUDA graphs. `stale_every=N` makes every run with a
CUDA graph on (a plan made with cuda=True) shift every Nth token: a stale graph, without a GPU.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from .engine import Job
from .results import RunResult, Sample


def _hash_answer(prompt: str) -> str:
    return str(int(hashlib.sha256(prompt.encode()).hexdigest()[:4], 16) % 100)


class FakeEngine:
    def __init__(self, answers: Callable[[str], str] | dict[str, str] | None = None, stale_every: int | None = None):
        self.answers = answers.get if isinstance(answers, dict) else (answers or _hash_answer)
        self.stale_every = stale_every
        self.calls: list[str] = []  # the run keys of the jobs run, in order (tests count cache hits with it)

    def tokens(self, job: Job, prompt: str) -> list[int]:
        answer = self.answers(prompt)
        text = f"Adding it up gives {answer}.\n#### {answer}" if answer is not None else "I do not know."
        tokens = [ord(c) for c in text][:job.max_new_tokens]
        every = []
        if job.engine.fault == "perturb":
            every.append(7)
        if self.stale_every and any(job.engine.cuda_graph):
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
        if job.engine.fault in ("abort", "hang"):
            lost = [Sample(index=s.index, status="missing") for s in samples[1:]]
            if job.engine.fault == "abort":
                return RunResult(job.key, "crash", samples[:1] + lost, error_class="sigabrt",
                                 error="worker killed by SIGABRT", log_tail=["fake abort"], meta=meta)
            return RunResult(job.key, "timeout", samples[:1] + lost, error_class="hang",
                             error=f"no progress (no finished request, no engine step) for {job.limits().stall_s:.0f} s",
                             meta=meta)
        return RunResult(job.key, "ok", samples, meta=meta)
