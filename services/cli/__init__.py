"""The ``llmforge`` command: one module per group of subcommands, ``main`` builds the parser."""

from services.cli.main import main

__all__ = ["main"]
