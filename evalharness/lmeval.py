"""`python -m evalharness.lmeval ARGS`: lm-eval's own command line with the `cb` model registered.

lm-eval 0.4.13 discovers no model plugins (no entry points), so this imports `evalharness.lmeval_model` (which
registers `cb`) and hands the arguments to lm-eval's CLI unchanged, e.g.

    python -m evalharness.lmeval --include_path tests/tasks --tasks evalharness_gsm8k_local --model cb \\
        --model_args pretrained=smollm2-135m,cuda_graph=varlen --limit 4 --log_samples --output_path out/
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from . import lmeval_model  # noqa: F401  registers `cb`

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
