"""Fitness evaluation: tasks, metrics and the in-memory Evaluator."""

from evomerge.evaluation.candidates import Candidate, PerTask
from evomerge.evaluation.evaluator import EvalResult, Evaluator
from evomerge.evaluation.metrics import METRICS, TEACHER_FORCED, TEXT_METRICS

__all__ = ["Candidate", "EvalResult", "Evaluator", "METRICS", "PerTask", "TEACHER_FORCED", "TEXT_METRICS"]
