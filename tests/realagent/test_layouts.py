"""What tmux shows as the pane's command for each way Claude Code is installed and started.

Facts for liveness (SPEC: alive never depends on this name): tmux reports the
basename of argv[0] of the terminal's foreground process group leader.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import typing as t

import pytest

from gtd.screen import Condition
from tests.realagent.conftest import StartAgent
from tests.realagent.harness import BINARY, NATIVE, PACKAGE, VERSION

EXE = PACKAGE / "claude-code" / "bin" / "claude.exe"
WRAPPER_JS = PACKAGE / "claude-code" / "cli-wrapper.cjs"


def _script(base: pathlib.Path, name: str, body: str) -> tuple[str, ...]:
    path = base / name
    path.write_text(f'#!/bin/sh\n{body} "$@"\n')
    path.chmod(0o755)
    return (str(path),)


def _version_file(base: pathlib.Path) -> tuple[str, ...]:
    versions = base / "versions"
    versions.mkdir()
    (versions / VERSION).symlink_to(NATIVE)
    return (str(versions / VERSION),)


class Layout(t.NamedTuple):
    test_id: str
    command: t.Callable[[pathlib.Path], tuple[str, ...]]
    shown: str


LAYOUTS = [
    Layout("npm-symlink", lambda _: (str(BINARY),), "claude"),
    Layout("claude-exe", lambda _: (str(EXE),), "claude.exe"),
    Layout("native-versions-file", _version_file, VERSION),
    Layout("node-wrapper", lambda _: ("/usr/bin/node", str(WRAPPER_JS)), "node"),
    Layout("exec-wrapper", lambda b: _script(b, "claude-exec", f"exec {BINARY}"), "claude"),
    Layout("fork-wrapper", lambda b: _script(b, "claude-fork", str(BINARY)), "sh"),
]


@pytest.mark.parametrize(Layout._fields, LAYOUTS, ids=[c.test_id for c in LAYOUTS])
def test_pane_current_command_per_layout(
    test_id: str,
    command: t.Callable[[pathlib.Path], tuple[str, ...]],
    shown: str,
    start_agent: StartAgent,
) -> None:
    """Started this way, Claude Code reaches its prompt and tmux names it *shown*."""
    agent = start_agent(launch=False)
    argv = command(agent.base)
    for path in agent.base.iterdir():
        os.chown(path, agent.pw.pw_uid, agent.pw.pw_gid, follow_symlinks=False)
    agent.options = dataclasses.replace(agent.options, command=argv)
    agent.start(prepare=False)
    agent.wait_for(Condition.IDLE)
    assert shown == agent.tmux.pane(agent.pane).current_command
