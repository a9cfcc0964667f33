"""The Claude Code adapter on screens captured from the pinned version, and `trust`."""

# ruff: noqa: RUF001, RUF002 - the screens hold U+276F, Claude Code's prompt

from __future__ import annotations

import datetime
import doctest
import json
import os
import pathlib
import stat
import typing as t

import pytest

from gtd import claude
from gtd.claude import ClaudeCode, config_path, trust, with_trust
from gtd.exc import TrustError
from gtd.screen import Condition, Reading, Screen
from tests.realagent.harness import SCREENS, VERSION, load_screen

FIXTURES = SCREENS / VERSION


class Case(t.NamedTuple):
    test_id: str
    condition: Condition
    detail: str
    input: str | None
    resets: str | None = None


CASES = [
    Case("idle-fresh", Condition.IDLE, "", ""),
    Case("idle-after-turn", Condition.IDLE, "", ""),
    Case("typed", Condition.IDLE, "", "half typed"),
    Case("typed-cursor-mid", Condition.IDLE, "", "half typed"),
    Case("typed-cursor-home", Condition.IDLE, "", "half typed"),
    Case("multiline", Condition.IDLE, "", "line one\nline two"),
    Case("pasted", Condition.IDLE, "", "[Pasted text #1]"),
    Case("early-keys", Condition.IDLE, "", "HEARTBEAT: early"),
    Case("exit-armed", Condition.IDLE, "", ""),
    Case("busy-turn", Condition.BUSY, "working: Doodling…", ""),
    Case("busy-typed", Condition.BUSY, "working: Crystallizing…", "while busy"),
    Case("busy-queued", Condition.BUSY, "working: Working…", ""),
    Case("busy-tool", Condition.BUSY, "working: Incubating…", ""),
    Case("trust-dialog", Condition.DIALOG, "folder-trust dialog", None),
    Case("bypass-warning", Condition.DIALOG, "bypass-permissions warning", None),
    Case("first-run", Condition.DIALOG, "first-run setup (theme)", None),
    Case(
        "first-run-offline",
        Condition.DIALOG,
        "login: cannot reach Anthropic (first run, no key)",
        None,
    ),
    Case("not-logged-in", Condition.DIALOG, "not logged in (run /login)", ""),
    Case("rewind-menu", Condition.DIALOG, "menu: Rewind", None),
    Case("model-menu", Condition.DIALOG, "menu: Select model", None),
    Case(
        "usage-limit",
        Condition.LIMITED,
        "usage limit, resets 6:22pm, continues by itself",
        "",
        "6:22pm",
    ),
    Case(
        "usage-limit-cancelled",
        Condition.LIMITED,
        "5-hour limit, resets 6:23pm (UTC)",
        "",
        "6:23pm (UTC)",
    ),
    Case(
        "usage-limit-days",
        Condition.LIMITED,
        "usage limit, resets Nov 30, 3:11pm (UTC), at the rate-limit options menu",
        None,
        "Nov 30, 3:11pm (UTC)",
    ),
    Case(
        "rate-limit-options",
        Condition.LIMITED,
        "usage limit, resets 6:23pm (UTC), at the rate-limit options menu",
        None,
        "6:23pm (UTC)",
    ),
    Case("rate-limited", Condition.LIMITED, "rate limited (API error 429)", ""),
]


@pytest.mark.parametrize(Case._fields, CASES, ids=[c.test_id for c in CASES])
def test_reads_captured_screen(
    test_id: str, condition: Condition, detail: str, input: str | None, resets: str | None
) -> None:
    """Each screen captured from the real Claude Code reads as what it shows."""
    screen = load_screen(FIXTURES / f"{test_id}.txt")
    assert Reading(condition, detail, input, resets) == ClaudeCode().read(screen)


def test_every_captured_screen_has_a_case() -> None:
    """A screen captured but not asserted on would prove nothing."""
    assert sorted([*(c.test_id for c in CASES), "wrapped"]) == sorted(
        p.stem for p in FIXTURES.glob("*.txt")
    )


def test_wrapped_input_is_read_as_the_rows_shown() -> None:
    """A long input wraps into indented rows; the text is every word typed, in order."""
    reading = ClaudeCode().read(load_screen(FIXTURES / "wrapped.txt"))
    assert (Condition.IDLE, ["abcdefghi"] * 30) == (
        reading.condition,
        (reading.input or "").split(),
    )


def test_dialog_prompt_is_not_an_input_box() -> None:
    """A menu's selection row (``❯`` and a plain blank) is never taken for the input prompt."""
    screen = load_screen(FIXTURES / "trust-dialog.txt")
    assert "❯ " in screen.text()
    assert claude.input_box(screen) is None


def test_typed_text_at_home_is_not_a_hint() -> None:
    """Text with the cursor at its start is the person's; only faint text is a hint."""
    typed = load_screen(FIXTURES / "typed-cursor-home.txt")
    hint = load_screen(FIXTURES / "not-logged-in.txt")
    assert (typed.cursor_x, hint.cursor_x) == (2, 2)
    assert ("half typed", "") == (ClaudeCode().read(typed).input, ClaudeCode().read(hint).input)


def test_stale_busy_title_alone_marks_busy() -> None:
    """The title's spinner is a busy signal of its own (safe side: a poke waits)."""
    box = "─" * 20
    screen = Screen.plain(f"{box}\n❯\u00a0\n{box}", cursor=(2, 1), title="◐ Claude Code")
    assert Condition.BUSY == ClaudeCode().read(screen).condition


def test_unknown_screen_reads_as_starting() -> None:
    """A blank or unknown screen (just started, cooked-mode echo) gets no poke."""
    assert Condition.STARTING == ClaudeCode().read(Screen.plain("HEARTBEAT: early")).condition


def test_doctests() -> None:
    """The examples in gtd.claude hold."""
    assert 0 == doctest.testmod(claude).failed


# -- trust --------------------------------------------------------------------


def test_with_trust_keeps_other_keys() -> None:
    """Only the trust key of the given workdirs changes; everything else is as it was."""
    config = {"numStartups": 3, "projects": {"/w": {"allowedTools": ["x"]}, "/o": {}}}
    updated, added = with_trust(config, ["/w"])
    assert ["/w"] == added
    assert {
        "numStartups": 3,
        "projects": {"/w": {"allowedTools": ["x"], "hasTrustDialogAccepted": True}, "/o": {}},
    } == updated
    assert {"/w": {"allowedTools": ["x"]}, "/o": {}} == config["projects"]


@pytest.mark.parametrize("workdir", ["rel/dir", "/a/../b", "/a/"])
def test_with_trust_refuses_unclear_paths(workdir: str) -> None:
    """A relative or unnormalised path would be a key Claude Code never looks up."""
    with pytest.raises(ValueError, match="absolute, normalised"):
        with_trust({}, [workdir])


def test_trust_writes_atomically_and_keeps_mode(tmp_path: pathlib.Path) -> None:
    """The file keeps its other keys and its mode; a second run writes nothing."""
    path = tmp_path / ".claude.json"
    path.write_text(json.dumps({"theme": "dark", "projects": {}}))
    path.chmod(0o600)
    work = tmp_path / "town" / "deacon"
    work.mkdir(parents=True)
    assert [str(work)] == trust([work], path=path)
    config = json.loads(path.read_text())
    assert {"theme": "dark", "projects": {str(work): {"hasTrustDialogAccepted": True}}} == config
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert [] == trust([work], path=path)
    assert before == (path.stat().st_mtime_ns, path.stat().st_ino)


def test_trust_through_symlinks(tmp_path: pathlib.Path) -> None:
    """A linked config is written at its target; a linked workdir is trusted by both names."""
    real = tmp_path / "dotfiles" / "claude.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / ".claude.json"
    link.symlink_to(real)
    (tmp_path / "real-town").mkdir()
    (tmp_path / "town").symlink_to(tmp_path / "real-town")
    added = trust([tmp_path / "town"], path=link)
    assert [str(tmp_path / "town"), str(tmp_path / "real-town")] == added
    assert link.is_symlink()
    assert set(added) == set(json.loads(real.read_text())["projects"])


def test_trust_creates_a_private_file(tmp_path: pathlib.Path) -> None:
    """Without a config file, one is made, readable by its owner only."""
    path = tmp_path / ".claude.json"
    trust(["/srv/town/deacon"], path=path)
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert claude.trusted(json.loads(path.read_text()), "/srv/town/deacon")


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not JSON"), ("[1]", "not a JSON object"), ('{"projects": 3}', "projects")],
)
def test_trust_names_the_file_on_bad_content(
    tmp_path: pathlib.Path, content: str, problem: str
) -> None:
    """A broken config is left alone and the error names it and what is wrong."""
    path = tmp_path / ".claude.json"
    path.write_text(content)
    with pytest.raises(TrustError, match=problem) as err:
        trust(["/w"], path=path)
    assert str(path) in str(err.value)
    assert content == path.read_text()


def test_config_path_follows_claude_config_dir(tmp_path: pathlib.Path) -> None:
    """``CLAUDE_CONFIG_DIR`` moves the file; a lone legacy ``.config.json`` is used.

    This is Claude Code's own lookup (``sE``/``rQt`` in its bundle, 2.1.332).
    """
    env = {"HOME": str(tmp_path / "home"), "CLAUDE_CONFIG_DIR": str(tmp_path / "cfg")}
    assert tmp_path / "cfg" / ".claude.json" == config_path(env)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / ".config.json").write_text('{"x": 1}')
    assert tmp_path / "cfg" / ".config.json" == config_path(env)
    (tmp_path / "cfg" / ".claude.json").write_text("{}")
    assert tmp_path / "cfg" / ".claude.json" == config_path(env)
    assert tmp_path / "home" / ".claude.json" == config_path({"HOME": env["HOME"]})
    assert os.environ["HOME"] == str(config_path().parent)


SEEN = datetime.datetime(2026, 11, 27, 15, 2, tzinfo=datetime.UTC)


class Reset(t.NamedTuple):
    test_id: str
    shown: str
    at: str | None


RESETS = [
    Reset("noon", "12pm", "2026-11-28T12:00:00+00:00"),
    Reset("midnight", "12am", "2026-11-28T00:00:00+00:00"),
    Reset("minute-ago", "3:01pm", "2026-11-27T15:01:00+00:00"),
    Reset("zone", "6pm (Europe/Berlin)", "2026-11-27T18:00:00+01:00"),
    Reset("year", "Jan 2, 2027, 6pm", "2027-01-02T18:00:00+00:00"),
    Reset("unknown-zone", "6pm (Mars/Base)", None),
    Reset("bad-day", "Feb 30, 6pm", None),
]


@pytest.mark.parametrize(Reset._fields, RESETS, ids=[r.test_id for r in RESETS])
def test_reset_at(test_id: str, shown: str, at: str | None) -> None:
    """Claude Code's reset texts become the next such moment after the limit was seen."""
    when = claude.reset_at(shown, SEEN)
    assert at == (when.isoformat() if when else None)


def test_every_captured_reset_time_parses() -> None:
    """Each reset time read from a captured screen turns into a moment after it was seen."""
    for case in CASES:
        if case.resets is not None:
            when = claude.reset_at(case.resets, SEEN)
            assert when is not None, case.test_id
            assert when >= SEEN, case.test_id
