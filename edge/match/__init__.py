"""Is this the person? The one place where a probe meets a gallery and a threshold.

- base.py: the Scorer protocol (verify 1:1, identify 1:N, claim, compare two probes) and `accept`, the one
  `score >= threshold` of the project; each answer is a Result (identity or none, score, threshold, margin).
- thresholds.py: the 1:1 and 1:N operating thresholds, from the manifest's calibration.
- gallery.py: the enrolled templates, followed from the store (also changes made by other processes).
- cosine.py, head.py: the scorers (cosine of one embedder; a trained verification head over several);
  factory.py builds the one the configuration names.

Every caller — CLI, demo, enrolment's guards, the daemon's engine, the benchmarks — goes through a Scorer.
"""

from edge.match.base import Probe, Result, Scorer, accept, accept_all

__all__ = ["Probe", "Result", "Scorer", "accept", "accept_all"]
