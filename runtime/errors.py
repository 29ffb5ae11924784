"""Error types shared by the compiler and the torch-free runtime."""


class DycompError(Exception):
    """Base class of every error dycomp raises on purpose."""


class ArtifactError(DycompError):
    """A compiled artifact is missing, tampered with, truncated or of an unknown version."""
