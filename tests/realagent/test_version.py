"""Which Claude Code the real-agent tier proves: its version is in this test's id."""

from __future__ import annotations

import subprocess

import pytest

from tests.realagent.harness import BINARY, VERSION


@pytest.mark.parametrize("version", [VERSION], ids=lambda v: f"claude-code-{v}")
def test_pinned_claude_code_runs(version: str) -> None:
    """The installed binary is the pinned version (scripts/claude-code) and runs here."""
    out = subprocess.run(
        [str(BINARY), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"{version} (Claude Code)" == out.stdout.strip()
