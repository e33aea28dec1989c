"""Evaluation: answer a set's prompts under a reasoning mode, judge the final responses (:mod:`.run`), and the
numbers every table reads (:mod:`.metrics`: rates, and the only copies of the headline and the verdict).

``cada.evaluate.metrics`` is the module; its rate function is ``cada.evaluate.metrics.metrics``."""

from cada.evaluate.metrics import bootstrap_ci, breakdown, headline, rate, verdict
from cada.evaluate.run import evaluate, evaluate_model

__all__ = ["bootstrap_ci", "breakdown", "evaluate", "evaluate_model", "headline", "rate", "verdict"]
