"""mmpretrain-style configs: :mod:`.loader` reads and writes the files, :mod:`.specs` (with
:mod:`.data` and :mod:`.training`) turns a loaded dict into typed, validated specs that the
engine builds objects from."""
from ..errors import ConfigError
from .loader import dump_config, format_config, load_config

__all__ = ["ConfigError", "dump_config", "format_config", "load_config"]
