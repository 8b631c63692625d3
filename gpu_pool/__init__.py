"""The GPU pool's worker agent. Runs on providers' machines; never imports ``portal`` or ``tasks``."""

__version__ = "0.1.0"
