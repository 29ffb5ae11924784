"""dycomp: a compiler for PyTorch dynamic neural networks.

Importing `dycomp` is cheap and does not import torch; `dycomp.runtime` never does.
"""

import pkgutil

# dycomp.runtime is a distribution of its own (runtime/pyproject.toml) that installs
# dycomp/runtime/ without a dycomp/__init__.py, often in another sys.path entry than this
# package (the editable installs' link trees, a checkout on PYTHONPATH): look there too.
__path__ = pkgutil.extend_path(__path__, __name__)

from dycomp.errors import ArtifactError, DycompError, MismatchError, PassError, UnsupportedError

__version__ = "0.1.0"
__all__ = ["ArtifactError", "CompiledModel", "DycompError", "MismatchError", "PassError",
           "TuneConfig", "UnsupportedError", "bench", "compare", "compile", "load"]


def __getattr__(name):
    if name in ("compile", "CompiledModel", "load"):
        from dycomp import api

        return getattr(api, name)
    if name == "bench":
        from dycomp.benchmark import bench

        return bench
    if name == "compare":
        from dycomp.comparison import compare

        return compare
    if name == "TuneConfig":
        from dycomp.backends.tvm_backend import TuneConfig

        return TuneConfig
    raise AttributeError(f"module 'dycomp' has no attribute {name!r}")
