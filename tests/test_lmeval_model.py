"""The `cb` lm-eval model without running the engine: registration, until cutting, grouping, errors."""

from __future__ import annotations

import pytest


@pytest.fixture
def cb(tmp_path, monkeypatch):
    from evalharness import lmeval_model, models

    monkeypatch.setattr(models, "resolve", lambda *a: {"path": str(tmp_path), "gguf_file": "m.gguf", "dtype": "bf16",
                                                        "trust_remote_code": False, "label": "stub"})
    return lmeval_model.CBLM(pretrained="stub", cuda_graph="varlen", max_batch_tokens=256, workdir=str(tmp_path))


class Req:
    def __init__(self, context, gen_kwargs):
        self.args = (context, gen_kwargs)


def test_registered_next_to_lm_evals_models():
    from lm_eval.api.registry import get_model

    from evalharness.lmeval_model import CBLM

    assert get_model("cb") is CBLM
    assert get_model("hf").__name__ == "HFLM"  # registering cb must not hide lm-eval's own models


def test_engine_config_follows_the_harness_plan(cb):
    # on a CPU the varlen mode cannot capture graphs: the harness runs its padded-eager configuration
    assert cb.engine.max_bt == 256 and cb.engine.attn == "sdpa"
    assert cb.engine.force_padding or cb.engine.cuda_graph == (True, False)


def test_generate_until_cuts_and_groups(cb, monkeypatch):
    calls = []

    def fake_run(prompts, max_new):
        calls.append((list(prompts), max_new))
        return [f"{p} answer 4\nQuestion: next" for p in prompts]

    monkeypatch.setattr(cb, "_run", fake_run)
    reqs = [Req("a", {"until": ["Question:"], "max_gen_toks": 8}), Req("b", {"until": ["\n"]}),
            Req("c", {"until": "Question:", "max_gen_toks": 8, "do_sample": False})]
    assert cb.generate_until(reqs) == ["a answer 4\n", "b answer 4", "c answer 4\n"]
    assert sorted(calls, key=lambda c: c[1]) == [(["a", "c"], 8), (["b"], 256)]


def test_sampling_and_loglikelihood_are_refused(cb):
    with pytest.raises(ValueError, match="greedily"):
        cb.generate_until([Req("a", {"do_sample": True, "temperature": 0.7})])
    with pytest.raises(NotImplementedError, match="only generates"):
        cb.loglikelihood([Req("a", "b")])


def test_bad_model_args(tmp_path):
    from evalharness.lmeval_model import CBLM

    with pytest.raises(ValueError, match="cuda_graph"):
        CBLM(pretrained="stub", cuda_graph="sometimes")
    with pytest.raises(ValueError, match="unknown model_args"):
        CBLM(pretrained="stub", colour="blue")
