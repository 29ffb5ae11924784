"""Loading a model named by a TARGET string: `path/to/file.py:factory` or `pkg.module:factory`.

The factory is an `nn.Module` class constructible with no arguments, a module instance, or a
function (no required arguments) returning a module or `(module, example_inputs)`. Used by
`dycomp compile`. torch is imported only when a target is loaded, so that parsing and
validating a command line stays fast and torch-free.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dycomp.errors import DycompError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")  # for --input


class TargetError(DycompError):
    """TARGET, its factory, a checkpoint or the example inputs are not usable as given.

    A usage error: the fix is in the command line or the model file, not in dycomp.
    """

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """A parsed TARGET: where the code lives and the factory's (possibly dotted) name."""

    location: str  # a .py file path or a dotted module name
    factory: str

    @classmethod
    def parse(cls, spec: str) -> Target:
        location, sep, factory = spec.rpartition(":")
        if not sep or not location or not factory:
            raise TargetError(f"TARGET {spec!r} must look like path/to/model.py:factory or "
                              f"pkg.module:factory")
        if not all(part.isidentifier() for part in factory.split(".")):
            raise TargetError(f"TARGET {spec!r}: {factory!r} is not a Python name")
        if not _is_file(location) and not all(p.isidentifier() for p in location.split(".")):
            raise TargetError(f"TARGET {spec!r}: {location!r} is neither a .py file nor a "
                              f"dotted module name")
        return cls(location, factory)

    @property
    def is_file(self) -> bool:
        return _is_file(self.location)

    def __str__(self) -> str:
        return f"{self.location}:{self.factory}"


@dataclass
class Loaded:
    """What a factory produced: the model in eval mode and its example inputs, if any."""

    model: nn.Module
    example_inputs: tuple | None


def _is_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def load_target(target: Target) -> Loaded:
    """Import the target's code, call its factory and put the model in eval mode."""
    module = _import_file(Path(target.location)) if target.is_file else _import_module(
        target.location)
    obj = module
    for part in target.factory.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"{target.location} has no attribute {target.factory!r}"
                              f"{_available(module)}")
        obj = getattr(obj, part)
    loaded = _call_factory(obj, str(target))
    loaded.model.eval()
    log.info("loaded %s: %s, examples=%s", target, type(loaded.model).__name__,
             loaded.example_inputs is not None)
    return loaded


def _import_file(path: Path):
    if not path.is_file():
        raise TargetError(f"model file {str(path)!r} does not exist")
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else (
        f"_dycomp_target_{abs(hash(str(path)))}")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:  # sibling imports work as when running the script
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        hint = ("; for a module inside a package write TARGET as pkg.module:factory"
                if isinstance(e, ImportError) and "relative import" in str(e) else "")
        raise DycompError(f"importing {path.name} failed: {type(e).__name__}: {e}{hint}") from e
    return module


def _import_module(name: str):
    if "" not in sys.path and "." not in sys.path:  # like `python -m`: the cwd is importable
        sys.path.insert(0, "")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise TargetError(f"no module named {name!r} (from the current directory or the "
                              f"installed packages); for a file, write path/to/{name}.py") from e
        raise DycompError(f"importing {name} failed: {e}") from e
    except Exception as e:
        raise DycompError(f"importing {name} failed: {type(e).__name__}: {e}") from e


def _available(module) -> str:
    from torch import nn

    names = [n for n, v in vars(module).items() if not n.startswith("_") and (
        inspect.isfunction(v) or (inspect.isclass(v) and issubclass(v, nn.Module)))
        and getattr(v, "__module__", None) == module.__name__]
    return f"; it defines {', '.join(sorted(names))}" if names else ""


def _call_factory(obj, where: str) -> Loaded:
    from torch import nn

    if isinstance(obj, nn.Module):
        return Loaded(obj, None)
    if not callable(obj):
        raise TargetError(f"{where} is {_describe(obj)}, not an nn.Module class or a "
                          f"factory function")
    _check_no_required_args(obj, where)
    try:
        result = obj()
    except Exception as e:
        raise DycompError(f"{where}() raised {type(e).__name__}: {e}") from e
    if isinstance(result, nn.Module):
        return Loaded(result, None)
    if (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        examples = result[1]
        return Loaded(result[0], tuple(examples) if isinstance(examples, (tuple, list)) else (
            examples,))
    raise TargetError(f"{where}() returned {_describe(result)}; it must return an nn.Module "
                      f"or (module, example_inputs)")


def _check_no_required_args(obj, where: str) -> None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    required = [p.name for p in sig.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                       p.KEYWORD_ONLY)]
    if required:
        raise TargetError(f"{where} needs arguments ({', '.join(required)}); point TARGET at a "
                          f"function that takes none and builds the model")


def _describe(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a state_dict (or a dict holding one under "state_dict"/"model") into `model`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise TargetError(f"checkpoint {str(path)!r} does not exist") from e
    except Exception as e:
        raise TargetError(f"cannot read checkpoint {str(path)!r} as a weights-only torch file: "
                          f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise TargetError(f"checkpoint {str(path)!r} holds {_describe(state)}, not a state_dict")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise TargetError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
                          f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # shape mismatches
        raise TargetError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
                          f"{' '.join(str(e).split())}") from e


def _key_mismatch(model: nn.Module, state: dict) -> tuple[list, list]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def _few(keys: list, n: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def make_inputs(shapes, seed: int = 0) -> tuple:
    """Seeded example tensors for `(shape, dtype_name)` pairs: randn for floats, small
    integers in [0, 10) for ints, random bools."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype_name in shapes:
        dtype = getattr(torch, dtype_name)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.rand(shape, generator=g) > 0.5)
        else:
            out.append(torch.randint(0, 10, shape, generator=g, dtype=dtype))
    return tuple(out)
