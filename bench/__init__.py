"""Benchmarks of gtd against the project's targets (``sudo .venv/bin/python -m bench.run``).

They measure and report; they never assert. The service benchmarks run a real
``systemd --user`` manager for the sandbox user ``gtdbench`` (``tests/sandbox.py``);
the tmux-work benchmark runs ``gtd run`` directly against a private tmux server.
"""

from __future__ import annotations
