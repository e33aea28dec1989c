"""Evaluation: answer a set's prompts under a reasoning mode, judge the final responses, and the numbers every
table reads (:mod:`cada.evaluate.metrics`, the only copies of the headline and the verdict)."""

from cada.evaluate.metrics import bootstrap_ci, breakdown, headline, metrics, rate, verdict
from cada.evaluate.run import evaluate

__all__ = ["bootstrap_ci", "breakdown", "evaluate", "headline", "metrics", "rate", "verdict"]
