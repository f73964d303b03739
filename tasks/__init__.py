"""lm-eval task YAMLs for every GSM8K variant the harness runs (`--include_path tasks` from the repository root;
installed as package data `evalharness/tasks/`). They inherit lm-eval's own YAMLs (see
`evalharness/lmeval_inherit.py`), so prompts, regexes and metrics are lm-eval's. Data comes from the hub by default;
`evalharness gsm8k --task NAME --data FILE` reads local files instead.
"""
