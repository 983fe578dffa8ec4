"""User-facing errors.

Every problem a user can fix (a wrong file, a mismatched video, a LoRA for another base) is raised
as a :class:`DWMError` that names the input at fault and the fix, so that the ComfyUI front end and
the command line show one readable line instead of a stack trace from deep inside torch.
"""

from __future__ import annotations


class DWMError(ValueError):
    """An error caused by an input, with the input's name and what to do about it."""

    def __init__(self, what: str, problem: str, fix: str):
        self.what, self.problem, self.fix = what, problem, fix
        super().__init__(f"{what}: {problem}. Fix: {fix}")


class DWMCancelled(RuntimeError):
    """Raised when a run is cancelled between sampler steps."""
