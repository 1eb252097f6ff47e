"""EdgeInspect: edge machine-vision quality inspection."""

__version__ = "0.1.0"
