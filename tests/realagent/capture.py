"""Capture the real Claude Code's screens as fixtures: ``python -m tests.realagent.capture``.

Each scenario starts the pinned version against the stand-in API, brings it to one
state (waiting on the very text that marks it, never on the adapter under test) and
writes ``tests/screens/<version>/<name>.txt`` (see ``harness.dump_screen``). Run it
as root after bumping the version; ``tests/test_claude.py`` reads the result.
Arguments name the scenarios to capture (all by default).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time
import typing as t

from tests import fakeapi
from tests.fakeapi import FakeAPI
from tests.realagent.harness import (
    SCREENS,
    USER,
    VERSION,
    Options,
    RealAgent,
    dump_screen,
    ensure_user,
)

Scenario = t.Callable[[RealAgent], None]
SCENARIOS: dict[str, tuple[Options, Scenario]] = {}
PROMPT_ROW = "\u276f\u00a0"


def scenario(name: str, options: Options | None = None) -> t.Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (options or Options(), fn)
        return fn

    return register


def _prompt(agent: RealAgent) -> None:
    agent.wait(lambda s: any(ln.startswith(PROMPT_ROW) for ln in s.lines), "the input prompt")


def _input_shows(agent: RealAgent, text: str) -> None:
    agent.wait(lambda s: any(text in ln for ln in s.lines), repr(text))


@scenario("idle-fresh")
def _idle_fresh(agent: RealAgent) -> None:
    _prompt(agent)


@scenario("idle-after-turn")
def _idle_after_turn(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type("hello there")
    _input_shows(agent, "hello there")
    agent.keys("Enter")
    agent.wait_text("done ")


@scenario("typed")
def _typed(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type("half typed")
    _input_shows(agent, PROMPT_ROW + "half typed")


@scenario("typed-cursor-mid")
def _typed_mid(agent: RealAgent) -> None:
    _typed(agent)
    x = agent.screen().cursor_x
    agent.keys("Left", "Left", "Left")
    agent.wait(lambda s: s.cursor_x == x - 3, "cursor three cells left")


@scenario("typed-cursor-home")
def _typed_home(agent: RealAgent) -> None:
    _typed(agent)
    agent.keys("Home")
    agent.wait(lambda s: s.cursor_x == 2, "cursor after the prompt")


@scenario("multiline")
def _multiline(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type("line one")
    _input_shows(agent, "line one")
    agent.keys("C-j")
    agent.type("line two")
    _input_shows(agent, "  line two")


@scenario("wrapped")
def _wrapped(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type(" ".join(["abcdefghi"] * 30))
    agent.wait(lambda s: sum("abcdefghi" in ln for ln in s.lines) >= 3, "three rows of input")


@scenario("pasted")
def _pasted(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type("x" * 850)
    _input_shows(agent, "[Pasted text #1]")


@scenario("busy-turn")
def _busy_turn(agent: RealAgent) -> None:
    _prompt(agent)
    agent.api.hold()
    agent.type("work please")
    _input_shows(agent, "work please")
    agent.keys("Enter")
    agent.wait_text("esc to interrupt")


@scenario("busy-typed")
def _busy_typed(agent: RealAgent) -> None:
    _busy_turn(agent)
    agent.type("while busy")
    _input_shows(agent, PROMPT_ROW + "while busy")


@scenario("busy-queued")
def _busy_queued(agent: RealAgent) -> None:
    _busy_typed(agent)
    agent.keys("Enter")
    agent.wait_text("Press up to edit queued messages")


@scenario("busy-tool")
def _busy_tool(agent: RealAgent) -> None:
    _prompt(agent)
    agent.api.reply(fakeapi.tool_use("sleep 30"))
    agent.type("run a tool")
    _input_shows(agent, "run a tool")
    agent.keys("Enter")
    agent.wait_text("sleep 30")
    agent.wait_text("esc to interrupt")


@scenario("trust-dialog", Options(trusted=False))
def _trust(agent: RealAgent) -> None:
    agent.wait_text("Yes, I trust this folder")


@scenario("bypass-warning", Options(bypass_accepted=False))
def _bypass(agent: RealAgent) -> None:
    agent.wait_text("Yes, I accept")


@scenario("first-run", Options(onboarded=False))
def _first_run(agent: RealAgent) -> None:
    agent.wait_text("Choose the text style")


@scenario("first-run-offline", Options(onboarded=False, login="none"))
def _first_run_offline(agent: RealAgent) -> None:
    # Without a key or token, first-run onboarding checks api.anthropic.com itself.
    agent.wait_text("Unable to connect to Anthropic services")


@scenario("not-logged-in", Options(login="none"))
def _not_logged_in(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type("hi")
    _input_shows(agent, "hi")
    agent.keys("Enter")
    agent.wait_text("Not logged in")


@scenario("rewind-menu")
def _rewind(agent: RealAgent) -> None:
    _idle_after_turn(agent)
    agent.keys("Escape")
    agent.keys("Escape")
    agent.wait_text("Rewind")


@scenario("model-menu")
def _model_menu(agent: RealAgent) -> None:
    _prompt(agent)
    agent.type("/model")
    _input_shows(agent, PROMPT_ROW + "/model")
    agent.keys("Enter")
    agent.wait(lambda s: PROMPT_ROW not in s.text(), "the /model menu")


@scenario("usage-limit", Options(login="oauth"))
def _usage_limit(agent: RealAgent) -> None:
    _prompt(agent)
    agent.api.reply(fakeapi.usage_limit(time.time() + 3 * 3600 + 720))
    agent.type("over the limit")
    _input_shows(agent, "over the limit")
    agent.keys("Enter")
    agent.wait_text("limit resets")


@scenario("usage-limit-days", Options(login="oauth"))
def _usage_limit_days(agent: RealAgent) -> None:
    _prompt(agent)
    agent.api.reply(fakeapi.usage_limit(time.time() + 3 * 86400))
    agent.type("over the weekly limit")
    _input_shows(agent, "over the weekly limit")
    agent.keys("Enter")
    agent.wait_text("What do you want to do?")


@scenario("usage-limit-cancelled", Options(login="oauth"))
def _usage_limit_cancelled(agent: RealAgent) -> None:
    _usage_limit(agent)
    agent.keys("Escape")
    agent.wait_text("Automatic continue cancelled")


@scenario("rate-limit-options", Options(login="oauth"))
def _rate_limit_options(agent: RealAgent) -> None:
    _usage_limit(agent)
    agent.type("/rate-limit-options")
    _input_shows(agent, PROMPT_ROW + "/rate-limit-options")
    agent.keys("Enter")
    agent.wait_text("What do you want to do?")


@scenario("rate-limited")
def _rate_limited(agent: RealAgent) -> None:
    _prompt(agent)
    agent.api.reply(fakeapi.rate_limit())
    agent.type("too fast")
    _input_shows(agent, "too fast")
    agent.keys("Enter")
    agent.wait_text("429")


@scenario("exit-armed")
def _exit_armed(agent: RealAgent) -> None:
    _typed(agent)
    agent.keys("C-c")
    agent.wait_text("again to exit")


@scenario("early-keys")
def _early_keys(agent: RealAgent) -> None:
    # Sent at once after the pane exists, before Claude Code put its tty in raw mode.
    agent.type("HEARTBEAT: early")
    agent.keys("Enter")
    _prompt(agent)
    agent.wait(lambda s: "HEARTBEAT: early" in s.text() and PROMPT_ROW in s.text(), "echo")


def capture(names: list[str]) -> None:
    ensure_user(USER)
    out = SCREENS / VERSION
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        options, steps = SCENARIOS[name]
        with FakeAPI() as api, tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
            agent = RealAgent(api, pathlib.Path(tmp), options)
            try:
                agent.start()
                steps(agent)
                screen, raw = agent.snapshot()
                (out / f"{name}.txt").write_text(dump_screen(screen, raw))
                print(f"{name}: {agent.ui.read(screen).describe()}", flush=True)
            finally:
                agent.stop()


def _scratch() -> pathlib.Path:
    """A directory the test user can enter, for per-agent homes."""
    home = pathlib.Path(ensure_user(USER).pw_dir) / "gtd-realagent"
    home.mkdir(exist_ok=True)
    return home


if __name__ == "__main__":
    capture(sys.argv[1:] or list(SCENARIOS))
