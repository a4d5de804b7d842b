"""Runnable example workflows; their python handlers import as ``examples.<module>:<function>``."""
