"""evalharness: catches accuracy regressions in transformers' continuous-batching engine."""

__version__ = "0.1.0"
