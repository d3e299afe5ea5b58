"""megara_dark: master darks for MEGARA (GTC) from a compiled combination core."""

__version__ = "0.1.0"

__all__ = ["__version__"]
