"""Allow ``python -m gtd``."""

from __future__ import annotations

import sys

from gtd.cli import main

sys.exit(main())
