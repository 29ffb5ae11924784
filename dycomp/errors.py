"""Typed errors. Each names the object, the source line and what to do about it."""

from dycomp.runtime.errors import ArtifactError, DycompError

__all__ = ["ArtifactError", "DycompError", "MismatchError", "PassError", "UnsupportedError"]


class UnsupportedError(DycompError):
    """A construct the frontend cannot capture faithfully.

    Raised instead of producing a silently wrong graph.
    """

    def __init__(self, construct: str, where: str = "", hint: str = ""):
        self.construct, self.where, self.hint = construct, where, hint
        msg = f"{where}: {construct}" if where else construct
        super().__init__(f"{msg}. Hint: {hint}" if hint else msg)


class MismatchError(DycompError):
    """The compiled model disagrees with eager PyTorch on some input."""


class PassError(DycompError):
    """A pass failed; the message names the pass and the passes that ran before it."""
