"""backspace: turn a sentence into a pull request."""

__version__ = "0.1.0"
