"""dgx-music: everything that runs (config, spool, watcher, engine, systemd glue, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dgx-music")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"
