"""dycomp.runtime: runs compiled artifacts with numpy and backend runtimes only.

This package must never import torch: deployment needs neither PyTorch nor the
model's source.
"""

from dycomp.runtime.errors import ArtifactError, DycompError
from dycomp.runtime.host import Executor, HostProgram, load_host

__all__ = ["ArtifactError", "DycompError", "Executor", "HostProgram", "load_host"]
