"""megara_dark: master darks for MEGARA (GTC) from a compiled combination core."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("megara_dark")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
