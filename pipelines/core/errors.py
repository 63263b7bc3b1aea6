"""Errors a stage raises for the operator: the message is the whole story (bad URI, lock held, missing input)."""


class StageError(RuntimeError):
    """A stage cannot run as configured; the CLI prints the message and exits 2."""
