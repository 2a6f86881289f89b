"""Retraining and canary promotion (issue 14): the offline gate (:mod:`fissure.promotion.gate`)
and a canary step's evidence from Prometheus (:mod:`fissure.promotion.analysis`)."""

from fissure.promotion.analysis import Check, StepPolicy, StepResult, analyse

__all__ = ["Check", "StepPolicy", "StepResult", "analyse"]
