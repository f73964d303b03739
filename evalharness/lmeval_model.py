"""`cb`: an lm-eval model that generates through transformers' continuous-batching engine.

    lm_eval --model cb --model_args pretrained=DIR,gguf_file=F.gguf,cuda_graph=varlen,max_batch_tokens=384,attn=sdpa ...

Every generate_until request runs through the harness's own engine seam (`evalharness.engine.run_engine` with a `Job`:
one worker subprocess per distinct max_gen_toks), with the engine configuration the harness plans for that graph mode
(`config.plan_runs`), so `lm_eval --model cb` and `evalharness gsm8k` run the same engine the same way. Generation is
greedy; each response is cut at the request's `until` strings as lm-eval's HF model does. loglikelihood requests are
not supported (the CB engine only generates).

lm-eval 0.4.13 loads no plugins, so `cb` is registered when this module is imported: run lm-eval through
`python -m evalharness.lmeval ...` (same arguments as `lm_eval`), or import this module before `simple_evaluate`.

model_args: pretrained (a folder, a hub id, or an embedded model name such as smollm2-135m), gguf_file, dtype
(bf16|fp16|fp32|auto, default bf16), cuda_graph (off|on|varlen|decode, default off), max_batch_tokens (default 384),
attn (sdpa|eager|torch-flash|flash_attention_2|flash_attention_3, default sdpa), twin (true: run the mode's
padded-eager twin instead), inject (a harness fault, e.g. perturb), max_gen_toks (default 256), timeout_s,
workdir (keep the worker folders there; default a temporary folder), trust_remote_code, add_special_tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# lm-eval's own models first: get_model() imports them only while the registry is empty, so `cb` alone would hide them
import lm_eval.models  # noqa: F401
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .config import MODES, Capabilities, UsageError, plan_runs
from .engine import Job, run_engine
from .engine.process import default_limits

log = logging.getLogger("evalharness.lmeval")


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass
class _CBJob(Job):
    """A Job whose prompts may already carry their special tokens (a chat template applied by lm-eval)."""

    add_special_tokens: bool = True

    def spec(self) -> dict:
        return {**super().spec(), "add_special_tokens": self.add_special_tokens}


@register_model("cb")
class CBLM(LM):
    def __init__(self, pretrained: str = "smollm2-135m", gguf_file: str | None = None, dtype: str = "bf16",
                 cuda_graph: str = "off", max_batch_tokens: int = 384, attn: str = "sdpa", twin: bool = False,
                 inject: str | None = None, max_gen_toks: int = 256, timeout_s: float | None = None,
                 workdir: str | None = None, trust_remote_code: bool = False, add_special_tokens: bool | None = None,
                 progress: bool = True, batch_size=None, max_batch_size=None, device=None, **unknown) -> None:
        super().__init__()
        from . import models

        if unknown:
            raise ValueError(f"cb: unknown model_args {', '.join(sorted(unknown))}")
        if cuda_graph not in MODES:
            raise ValueError(f"cb: cuda_graph={cuda_graph!r}, choose from {', '.join(MODES)}")
        try:
            self.model = models.resolve(pretrained, gguf_file, dtype, _bool(trust_remote_code))
        except UsageError as e:
            raise ValueError(f"cb: {e}") from None
        self.mode = cuda_graph
        self.max_bt = int(max_batch_tokens)
        self.attn = attn
        self.twin = _bool(twin)
        self.inject = inject
        self.max_gen_toks = int(max_gen_toks)
        self.timeout_s = float(timeout_s) if timeout_s else None
        self.add_special_tokens = None if add_special_tokens is None else _bool(add_special_tokens)
        self.progress = _bool(progress)
        self._keep = workdir is not None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="evalharness-cb-"))
        self._tokenizer = None
        self._chat_applied = False
        self.engine = self._engine_config()
        log.info("cb: %s", self.engine.describe())

    def _engine_config(self):
        import torch

        from .parsers import parse_injections

        self.cuda = torch.cuda.is_available()
        caps = Capabilities(cuda=self.cuda, attn=self.attn)
        injections = parse_injections([f"{self.mode}={self.inject}"], [self.mode]) if self.inject else {}
        plan = plan_runs([self.mode], [self.max_bt], caps, injections)
        mp = plan.modes[0]
        if self.twin and mp.twin is None:
            raise ValueError("cb: twin=true needs a graph mode (cuda_graph=on|varlen|decode); off has no twin")
        for note in mp.notes:
            log.warning("cb: %s", note)
        return plan.runs[mp.twin if self.twin else mp.run]

    # ---- chat templates, as lm-eval's HFLM does them

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            kwargs = {"trust_remote_code": bool(self.model.get("trust_remote_code"))}
            if self.model.get("gguf_file"):
                kwargs["gguf_file"] = self.model["gguf_file"]
            self._tokenizer = AutoTokenizer.from_pretrained(self.model["path"], **kwargs)
        return self._tokenizer

    @property
    def tokenizer_name(self) -> str:
        name = self.model["path"] + (f"/{self.model['gguf_file']}" if self.model.get("gguf_file") else "")
        return name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        template = self.tokenizer.chat_template
        if isinstance(template, dict):
            key = chat_template if isinstance(chat_template, str) else "default"
            if key not in template:
                raise ValueError(f"cb: chat template {key!r} not among {sorted(template)}")
            return template[key]
        return template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        import jinja2

        self._chat_applied = True
        try:
            return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=not add_generation_prompt)
        except jinja2.exceptions.TemplateError:
            log.warning("cb: chat template failed; retrying without the system role")
            chat_history = [m for m in chat_history if m["role"] != "system"]
            return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=not add_generation_prompt)

    # ---- requests

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("cb: the continuous-batching engine only generates; loglikelihood (multiple-choice "
                                  "and perplexity) tasks are not supported. Use a generate_until task, or --model hf.")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("cb: the continuous-batching engine only generates; loglikelihood_rolling "
                                  "(perplexity) tasks are not supported. Use --model hf.")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

        groups: dict[int, list[int]] = {}
        stops: list[list[str]] = []
        for i, req in enumerate(requests):
            gen_kwargs = dict(req.args[1] or {})
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample") and float(kwargs.get("temperature") or 0.0) > 0.0:
                raise ValueError("cb: the harness decodes greedily; this task samples (do_sample=true). Pass "
                                 "--gen_kwargs do_sample=false or use another model.")
            stops.append([s for s in kwargs.get("until") or [] if s])
            groups.setdefault(int(kwargs["max_gen_toks"]), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for max_new, idx in groups.items():
            prompts = [requests[i].args[0] for i in idx]
            texts = self._run(prompts, max_new)
            for i, text in zip(idx, texts):
                out[i] = postprocess_generated_text(text, stops[i], None)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _run(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        special = self.add_special_tokens if self.add_special_tokens is not None else not self._chat_applied
        blob = json.dumps({"prompts": prompts, "model": self.model, "engine": self.engine.key(),
                           "max_new_tokens": max_new_tokens, "special": special}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        from .models import engine_spec

        timeout = self.timeout_s  # an explicit total limit; the hang signal is a stall (engine/process.py)
        job = _CBJob(key=self.engine.key(), engine=self.engine, model=engine_spec(self.model), prompts=prompts,
                     max_new_tokens=max_new_tokens, job_dir=self.workdir / key, timeout_s=timeout,
                     stall_s=default_limits(self.cuda).stall_s,
                     label=f"cb {self.engine.describe()}", add_special_tokens=special)
        result = run_engine(job, progress=self.progress)
        if result.status not in ("ok", "failed_requests"):
            tail = "\n".join(result.log_tail[-10:])
            raise RuntimeError(f"cb: engine run {result.status} ({result.error_class}): {result.error}\n{tail}\n"
                               f"worker folder: {job.job_dir}")
        bad = [s for s in result.samples if s.status != "ok"]
        if bad:
            log.warning("cb: %d of %d requests failed (%s); their responses are empty", len(bad), len(prompts),
                        result.error)
        if not self._keep:
            shutil.rmtree(job.job_dir, ignore_errors=True)
        return [s.text if s.status == "ok" and s.text is not None else "" for s in result.samples]

    def get_model_info(self) -> dict:
        return {"model": self.model.get("label"), "engine": self.engine.describe()}

    def __del__(self):
        if not getattr(self, "_keep", True):
            shutil.rmtree(getattr(self, "workdir", ""), ignore_errors=True)
