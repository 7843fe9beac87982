"""User-facing errors.

Every error a user can cause (a bad file, an unsupported op, a dynamic dimension without a
shape, an unknown target, a wrong input at run time) is a :class:`LeptonError` whose message
is one line naming the file / node / op / input and saying what to do. The CLI prints that
line and exits with code 2, without a traceback.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error caused by user input; its message is one actionable line."""

    exit_code = 2


class ModelLoadError(LeptonError):
    """The model file is missing, unreadable, not ONNX, or uses an unsupported opset."""


class UnsupportedModelError(LeptonError):
    """The model uses ops or constructs the compiler cannot lower; lists all of them at once."""


class ShapeError(LeptonError):
    """A dimension the compiler needs is unknown, or a shape override does not fit the model."""


class TargetError(LeptonError):
    """Unknown target, bad CUDA architecture, or a missing toolchain (nvcc)."""


class InputError(LeptonError):
    """A run-time input has the wrong name, dtype or shape."""


class ArtifactError(LeptonError):
    """A compiled artifact directory is missing, incomplete or from an incompatible version."""


class VerificationError(LeptonError):
    """Compiled outputs differ from onnxruntime beyond tolerance (CLI exit code 1)."""

    exit_code = 1


class OptionError(LeptonError):
    """An option names something that does not exist: an unknown pass or optimization level."""


def first_line(error: BaseException, *, with_type: bool = False, limit: int | None = 300) -> str:
    """The first line of ``error``'s message that says something (not blank, not a traceback
    line), cut to ``limit`` characters; with ``with_type`` prefixed with the exception's type.
    The one-line form every message that quotes another library's error uses."""
    for line in str(error).splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            text = f"{type(error).__name__}: {line}" if with_type else line
            return text[:limit] if limit else text
    return type(error).__name__
