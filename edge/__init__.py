"""facegate edge: everything that runs on the door or kiosk box."""

__version__ = "0.1.0"
