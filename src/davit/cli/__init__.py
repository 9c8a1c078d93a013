"""The ``davit`` command line: one module per subcommand, all argument parsing lives here."""
from .app import main, run_subcommand

__all__ = ["main", "run_subcommand"]
