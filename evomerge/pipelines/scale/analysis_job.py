"""What the pool analysis's child process imports before its arguments come.

Importing this module does the analysis's imports (torch, the analysis, the expert loader), so
a child warmed with it (:func:`~evomerge.pipelines.scale.start.prewarm_analysis`, which
``evomerge scale`` calls first thing on a fresh run) does them while the parent process does its
own, on a core that is idle then; the parent never imports this module.
"""

from __future__ import annotations

import torch  # noqa: F401 - the imports are the point

import evomerge.analysis  # noqa: F401
import evomerge.experts  # noqa: F401
from evomerge.pipelines.scale.start import run_analysis

__all__ = ["run_analysis"]
