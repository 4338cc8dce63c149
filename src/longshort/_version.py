"""The package version, in a module of its own (the run manifests record it; importing it loads nothing)."""

__version__ = "0.1.0"
