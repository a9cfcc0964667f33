"""The tmux control-mode transport against a real tmux server on a private socket."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import typing as t

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtd import control
from gtd.exc import NoServer, TmuxError, TmuxTimeout
from gtd.tmux import Tmux, _literal
from tests.conftest import TmuxServer
from tests.sandbox import retry_until

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def ctl(tmux_server: TmuxServer) -> t.Iterator[Tmux]:
    """A control-mode Tmux on the test server, closed afterwards."""
    tmux = Tmux(tmux_server.socket, timeout=5, control=True)
    yield tmux
    tmux.close()


def client(tmux: Tmux) -> control.ControlClient:
    assert tmux._client is not None
    return tmux._client


def server_pid(server: TmuxServer) -> int:
    return int(server.cmd("display-message", "-p", "#{pid}").stdout)


def sessions(server: TmuxServer) -> dict[str, str]:
    """Session name to its ``session_attached`` count, as ``tmux ls`` shows them."""
    out = server.cmd("list-sessions", "-F", "#{session_name} #{session_attached}", check=False)
    assert out.returncode == 0 or "no sessions" in out.stderr, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def outcome(tmux: Tmux, *args: str) -> tuple[int, str, str]:
    """What a call returned, or the error it raised, comparable across transports."""
    try:
        result = tmux.run(*args)
    except TmuxError as err:
        return (1, "", str(err))
    return (result.returncode, result.stdout, result.stderr)


def test_commands_answer_as_a_one_shot_client_does(
    ctl: Tmux, tmux_server: TmuxServer, tmp_path: pathlib.Path
) -> None:
    """Output, errors and ';' chains are the same through the control client as per process."""
    tmux_server.cmd(
        "new-session",
        "-d",
        "-s",
        "gt-deacon",
        "-x",
        "100",
        "-y",
        "10",
        "printf 'a\\n\\nb'; sleep 600",
    )
    assert retry_until(
        lambda: "b" in tmux_server.cmd("capture-pane", "-p", "-t", "=gt-deacon:").stdout, 5
    )
    one = Tmux(tmux_server.socket)
    ctl.list_panes()  # gtd-control exists for both
    calls = [
        ("list-panes", "-a", "-F", "#{session_name} #{pane_index} #{pane_width}"),
        ("capture-pane", "-p", "-t", "=gt-deacon:"),
        ("display-message", "-p", "-t", "=gt-deacon:", "it's ~ $HOME \\; é→❯ #{session_name};"),  # noqa: RUF001
        ("display-message", "-p", "x", ";", "display-message", "-p", "y\\;"),
        ("display-message", "-p", "x", ";", "has-session", "-t", "=nope",
         ";", "display-message", "-p", "z"),
        ("has-session", "-t", "=nope"),
        ("no-such-command",),
    ]  # fmt: skip
    for args in calls:
        assert outcome(one, *args) == outcome(ctl, *args), args
    assert 1 == client(ctl).connects


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0")))
def test_any_text_reaches_tmux_unchanged(ctl: Tmux, tmux_server: TmuxServer, text: str) -> None:
    """Quoting for the control client keeps every argument exactly (newlines, quotes, ~, $, ;).

    A trailing ';' is escaped as every caller does (tmux reads it as a separator).

    One server and one control client serve every example (the health check is
    about fixtures that would need resetting; these need none).
    """
    ctl.run("set-option", "-t", f"={control.SESSION}:", "@gtd_probe", _literal(text))
    shown = subprocess.run(
        ["tmux", "-u", "-L", tmux_server.socket, "show-options", "-v", "-t",
         f"={control.SESSION}:", "@gtd_probe"],
        capture_output=True, check=True, timeout=10, env=tmux_server.env,
    )  # fmt: skip
    assert (text + "\n").encode() == shown.stdout  # bytes: text mode would fold "\r"


def test_one_client_in_its_own_session_never_resizes_or_marks_agents(
    ctl: Tmux, tmux_server: TmuxServer
) -> None:
    """One client for every call, in gtd-control with ignore-size,no-output; tmux ls stays true."""
    tmux_server.cmd("new-session", "-d", "-s", "gt-deacon", "-x", "123", "-y", "45", "sleep 600")
    for _ in range(20):
        ctl.list_panes()
    clients = tmux_server.cmd("list-clients", "-F", "#{client_session} #{client_flags}").stdout
    [(session, flags)] = [line.split(" ", 1) for line in clients.splitlines()]
    assert control.SESSION == session
    assert {"control-mode", "ignore-size", "no-output"} <= set(flags.split(","))
    assert {"gt-deacon": "0", control.SESSION: "1"} == sessions(tmux_server)
    size = tmux_server.cmd(
        "display-message", "-p", "-t", "=gt-deacon:", "#{window_width}x#{window_height}"
    )
    assert "123x45\n" == size.stdout
    assert ["gt-deacon"] == [p.session_name for p in ctl.list_panes()]
    assert 1 == client(ctl).connects


def test_close_takes_the_session_away_and_so_does_kill_9(
    ctl: Tmux, tmux_server: TmuxServer, tmp_path: pathlib.Path
) -> None:
    """No gtd-control session outlives its client: closed, or its owner killed with SIGKILL.

    Another session keeps the server up (with none left, tmux exits: exit-empty).
    """
    tmux_server.cmd("new-session", "-d", "-s", "a", "sleep 600")
    ctl.list_panes()
    assert control.SESSION in sessions(tmux_server)
    ctl.close()
    assert retry_until(lambda: control.SESSION not in sessions(tmux_server), 5)
    script = (
        "import sys, time; from gtd.tmux import Tmux, _literal; "
        f"Tmux({tmux_server.socket!r}, control=True).list_panes(); print('up', flush=True); "
        "time.sleep(600)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=tmux_server.env
    )
    assert owner.stdout is not None
    assert "up\n" == owner.stdout.readline()
    assert control.SESSION in sessions(tmux_server)
    owner.kill()
    owner.wait()
    assert retry_until(lambda: control.SESSION not in sessions(tmux_server), 5), sessions(
        tmux_server
    )


def test_a_killed_session_or_client_is_reconnected(ctl: Tmux, tmux_server: TmuxServer) -> None:
    """Someone kills gtd-control, or the client process: the next call connects again."""
    tmux_server.cmd("new-session", "-d", "-s", "s", "sleep 600")
    ctl.list_panes()
    tmux_server.cmd("kill-session", "-t", f"={control.SESSION}")
    assert ["s"] == [p.session_name for p in ctl.list_panes()]
    assert 2 == client(ctl).connects
    pid = client(ctl).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Until tmux notices the client is gone it still answers on the client's pipes.
    assert retry_until(
        lambda: ["s"] == [p.session_name for p in ctl.list_panes()] and client(ctl).connects == 3,
        5,
    )


def test_killed_server_gives_no_server_then_a_new_one_is_used(
    ctl: Tmux, tmux_server: TmuxServer
) -> None:
    """After kill-server the same errors as a one-shot client; a restarted server is reached."""
    tmux_server.cmd("new-session", "-d", "-s", "s", "sleep 600")
    ctl.list_panes()
    tmux_server.cmd("kill-server")
    assert [] == ctl.list_panes()
    with pytest.raises(NoServer):
        ctl.list_panes(missing_ok=False)
    assert ctl.server_running() is False
    tmux_server.start()
    tmux_server.cmd("new-session", "-d", "-s", "back", "sleep 600")
    assert ["back"] == [p.session_name for p in ctl.list_panes()]


def test_control_client_survives_usr1_and_hup(ctl: Tmux, tmux_server: TmuxServer) -> None:
    """``systemctl --user kill -s USR1|HUP`` hits the client too: it stays connected."""
    ctl.list_panes()
    pid = client(ctl).pid
    assert pid is not None
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    blocked = int(next(x for x in status.splitlines() if x.startswith("SigBlk:")).split()[1], 16)
    for sig in (signal.SIGUSR1, signal.SIGHUP):
        assert blocked & (1 << (sig - 1)), sig
        os.kill(pid, sig)
    ctl.list_panes()
    assert (pid, 1) == (client(ctl).pid, client(ctl).connects)


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "connecting"])
def test_frozen_server_times_out_each_call_and_survives(
    tmux_server: TmuxServer, connected: bool
) -> None:
    """SIGSTOP: each call times out in bound, no second client starts, the server lives on.

    tmux before 3.7 crashes when it notifies a control client it has not finished
    setting up; killing clients while the server is frozen would leave it such
    clients. A person's new session after SIGCONT is such a notification.
    """
    tmux_server.cmd("new-session", "-d", "-s", "gt-deacon", "sleep 600")
    pid = server_pid(tmux_server)
    ctl = Tmux(tmux_server.socket, timeout=0.3, control=True)
    try:
        if connected:
            ctl.list_panes()
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                begun = time.monotonic()
                with pytest.raises(TmuxTimeout):
                    ctl.list_panes()
                assert time.monotonic() - begun < 2
            assert 1 == client(ctl).connects
        finally:
            os.kill(pid, signal.SIGCONT)
        tmux_server.cmd("new-session", "-d", "-s", "person", "sleep 600")
        assert retry_until(lambda: len(ctl.list_panes()) == 2, 5)
        assert pid == server_pid(tmux_server)
        assert 1 == client(ctl).connects
    finally:
        ctl.close()


def test_hooks_and_notifications_do_not_leak_into_answers(
    ctl: Tmux, tmux_server: TmuxServer
) -> None:
    """A person's hook output and session changes between calls never show in a listing."""
    tmux_server.cmd("new-session", "-d", "-s", "a", "sleep 600")
    tmux_server.cmd("set-hook", "-g", "after-list-panes", "display-message -p HOOKED")
    first = ctl.run("list-panes", "-a", "-F", "#{session_name}").stdout
    for i in range(5):
        tmux_server.cmd("new-window", "-d", "-t", "=a:", "sleep 600")
        tmux_server.cmd("new-session", "-d", "-s", f"b{i}", "sleep 600")
    second = ctl.run("list-panes", "-a", "-F", "#{session_name}").stdout
    assert ["a", control.SESSION] == sorted(first.split())
    assert 11 + 1 == len(second.split())
    assert "HOOKED" not in first + second


def test_tmux_without_control_mode_falls_back_to_a_process_per_call(
    tmux_server: TmuxServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tmux that refuses the control client's command line still gets every call done."""
    real = Tmux().binary
    wrapper = tmp_path / "bin" / "tmux"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -C ] && { echo "unknown option -- C" >&2; exit 1; }; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    tmux_server.cmd("new-session", "-d", "-s", "s", "sleep 600")
    ctl = Tmux(tmux_server.socket, control=True)
    assert ["s"] == [p.session_name for p in ctl.list_panes()]
    assert ["s"] == [p.session_name for p in ctl.list_panes()]
    assert 1 == client(ctl).connects
    assert control.SESSION not in sessions(tmux_server)


def test_closing_again_and_again_never_crashes_the_server(tmux_server: TmuxServer) -> None:
    """Connect, close, list sessions, twenty times: the same server answers throughout.

    The session goes through its client-detached hook, the ordinary kill-session
    path. With ``destroy-unattached`` instead, tmux 3.3a crashed twice in this
    file's runs with tmux GitHub issue 5497's crash (a session destroyed while a
    client on its way out still points to it); it is timing-dependent.
    """
    tmux_server.cmd("new-session", "-d", "-s", "a", "sleep 600")
    pid = server_pid(tmux_server)
    for _ in range(20):
        ctl = Tmux(tmux_server.socket, control=True)
        ctl.list_panes()
        ctl.close()
        assert "a" in sessions(tmux_server)
    assert retry_until(lambda: control.SESSION not in sessions(tmux_server), 5)
    assert pid == server_pid(tmux_server)
