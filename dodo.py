"""kthw-airgap: `doit list` shows the stages, README.md the workflow."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasks import namespace

# doit reads DOIT_CONFIG and the task_* creators from this module's namespace.
globals().update(namespace())
__all__ = list(namespace())
