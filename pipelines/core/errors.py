"""Errors a stage raises for the operator: the message is the whole story (bad URI, lock held, missing input).

Exit codes of every stage CLI (``jobs/cli.py``): 0 done, 1 error rate exceeded, 2 cannot run. :func:`expected_errors`
are the failures that mean "cannot run" — printed as one ``error:`` line (:func:`error_line`), never a traceback.
Anything else is a bug: Python's traceback and exit 1 are the honest report of that.
"""
from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot run as configured; the CLI prints the message and exits 2."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are an operator's problem (exit 2): bad config, a stage that cannot run (lock held
    or lost, missing input), a missing or malformed manifest or dataset root, an unreadable checkpoint, storage
    unreachable or denied (every :class:`pipelines.core.storage.StorageError`). Imported lazily: the CLI asks only
    after something failed."""
    from pfafn.checkpoint import CheckpointError
    from pipelines.core.config import ConfigError
    from pipelines.core.manifests import ManifestError
    from pipelines.core.storage import StorageError
    from pipelines.training.data import DatasetRootError

    return (ConfigError, StageError, ManifestError, StorageError, DatasetRootError, CheckpointError)


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, when ``exc`` is Ray's wrapper of it (``RayTaskError.cause``; Ray makes the
    wrapper an instance of the cause's class, with the remote traceback as its text)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and isinstance(exc.cause, BaseException) and seen < 5:
        exc, seen = exc.cause, seen + 1
    return exc


def is_expected(exc: BaseException) -> bool:
    return isinstance(root_cause(exc), expected_errors())


def error_line(exc: BaseException, limit: int = 500) -> str:
    """``exc`` as the one ``error:`` line: its own message (a Ray wrapper's cause's), whitespace folded."""
    cause = root_cause(exc)
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
