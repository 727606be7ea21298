"""spiritlm-serve: serving system for Meta's Spirit LM."""

__version__ = "0.1.0"
