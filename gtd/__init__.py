"""gtd: the Gas Town daemon as a systemd-native user service."""

from __future__ import annotations

__version__ = "0.2.0"
