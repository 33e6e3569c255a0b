"""The `mlstack` command line: one module per command group (data, features, training, serving,
monitoring, stack, demo), `render` for what they print, `context` for the settings, `app` to tie them up."""

from mlstack.cli.app import main

__all__ = ["main"]
