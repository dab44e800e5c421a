"""The installed package's version (recorded in adapter configs, merge records and cards)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dppa-peft")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
