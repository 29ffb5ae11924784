"""Error types shared by the compiler and the torch-free runtime."""

import builtins


class DycompError(Exception):
    """Base class of every error dycomp raises on purpose."""


class ArtifactError(DycompError):
    """A compiled artifact is missing, tampered with, truncated or of an unknown version."""


class ModelError(DycompError):
    """An exception the model raises (`raise`, a failed `assert`) whose class the
    torch-free runtime cannot rebuild (a class of the model's own code): it names the
    original class (`module`, `qualname`) and carries its arguments (`exc_args`)."""

    def __init__(self, module: str, qualname: str, args: tuple):
        self.module, self.qualname, self.exc_args = module, qualname, tuple(args)
        text = ", ".join(map(str, args))
        super().__init__(f"{module}.{qualname}: {text}" if text else f"{module}.{qualname}")


def model_error(module: str, qualname: str, args: tuple) -> BaseException:
    """The exception a compiled model raises: a builtin class by name (`ValueError`,
    `AssertionError`, ...) with the same arguments, else a `ModelError` naming it."""
    cls = getattr(builtins, qualname, None) if module == "builtins" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(*args)
    return ModelError(module, qualname, args)
