"""schedbench: how much of an LLM decode step is CPU scheduling overhead, measured."""

__version__ = "0.1.0"
