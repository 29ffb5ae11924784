"""dycomp.runtime: runs compiled artifacts with numpy and backend runtimes only.

This package must never import torch: deployment needs neither PyTorch nor the
model's source.
"""

from dycomp.runtime.artifact import Artifact, Signature, TensorSpec, load, sign
from dycomp.runtime.errors import ArtifactError, DycompError, ModelError
from dycomp.runtime.host import Executor, HostProgram, load_host

__all__ = ["Artifact", "ArtifactError", "DycompError", "Executor", "HostProgram", "ModelError",
           "Signature", "TensorSpec", "load", "load_host", "sign"]
