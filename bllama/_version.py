"""The package version, written once: bllama/__init__.py imports it and setup.py reads this file as text (so building
does not import bllama, and with it torch)."""
__version__ = "0.1.0"
