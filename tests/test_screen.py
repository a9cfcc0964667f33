"""Screens: parsing tmux's styled capture, and reading a real pane in one call."""

from __future__ import annotations

import collections
import doctest
import sys

import pytest

from gtd import screen as screen_mod
from gtd.screen import Condition, Reading, Screen, parse_sgr_line
from gtd.tmux import Tmux
from tests.conftest import TmuxServer
from tests.sandbox import retry_until


def test_sgr_marks_faint_and_reverse_per_character() -> None:
    """Faint and reverse are tracked through resets, colours with arguments and 22/27."""
    row = "\x1b[38;2;1;2;3mab\x1b[2mcd\x1b[38;5;7;7mef\x1b[22mg\x1b[0mh\x1b[27m"
    assert ("abcdefgh", "00113320") == parse_sgr_line(row)


def test_other_escapes_are_dropped() -> None:
    """Hyperlinks (OSC 8) and other sequences leave only the text."""
    row = "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b[?25lok"
    assert ("link ok", "0000000") == parse_sgr_line(row)


def test_from_capture_pads_missing_rows() -> None:
    """Trailing empty rows that tmux leaves out are there; the screen has its height."""
    s = Screen.from_capture("a\nb\n", cursor_x=0, cursor_y=3, width=5, height=4)
    assert (("a", "b", "", ""), "") == (s.lines, s.line(3))
    assert "00000" == Screen.plain("hello").style(0)


def test_reading_describe() -> None:
    """A reading in one phrase for STATUS= and the journal."""
    assert (
        "limited: usage limit, resets 6pm"
        == Reading(Condition.LIMITED, "usage limit, resets 6pm", resets="6pm").describe()
    )


def test_doctests() -> None:
    """The examples in gtd.screen hold."""
    assert 0 == doctest.testmod(screen_mod).failed


SHOW = (
    "import sys, time; sys.stdout.write('\\x1b]2;my title\\x1b\\\\'); "
    "sys.stdout.write('plain \\x1b[2mfaint\\x1b[0m \\x1b[7mX\\x1b[0m\\r\\n'); "
    "sys.stdout.write('row two\\x1b[1;4H'); sys.stdout.flush(); time.sleep(60)"
)


@pytest.mark.integration
def test_tmux_screen_reads_text_styles_cursor_title_and_mode(tmux_server: TmuxServer) -> None:
    """One call gives the pane's rows, its faint and reverse cells, cursor, title, copy mode."""
    tmux_server.cmd("new-session", "-d", "-s", "s", "-x", "40", "-y", "5",
                    "--", sys.executable, "-c", SHOW)  # fmt: skip
    pane = tmux_server.cmd("display-message", "-p", "-t", "=s:", "#{pane_id}").stdout.strip()
    tmux = Tmux(tmux_server.socket)
    assert retry_until(lambda: tmux.screen(pane).line(1) == "row two", 5)
    before = tmux.calls.copy()
    s = tmux.screen(pane)
    assert collections.Counter({"display-message": 1}) == tmux.calls - before
    assert ("plain faint X", "0000001111102") == (s.line(0), s.style(0))
    assert ((3, 0), (40, 5), "my title", False) == (
        (s.cursor_x, s.cursor_y),
        (s.width, s.height),
        s.title,
        s.in_mode,
    )
    tmux_server.cmd("copy-mode", "-t", pane)
    assert tmux.screen(pane).in_mode
