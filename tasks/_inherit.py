"""lm-eval resolves `class: !function _inherit.LmEvalTask` next to the YAML; the class lives in the package."""

from evalharness.lmeval_inherit import LmEvalTask  # noqa: F401
