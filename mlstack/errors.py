"""Errors the stack reports to users as one clear message (the CLI prints them without a traceback)."""


class StackError(RuntimeError):
    """Base of every expected, user-actionable failure: the message says what is wrong and what to do."""
