"""The data side's one error type (imported by everything under loaders/, so it imports nothing)."""


class DataError(ValueError):
    """Data that cannot be used: the message is one line saying what and how to fix it."""
