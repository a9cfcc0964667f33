"""``gtd``: the command line (its parser and the dispatch to :mod:`gtd.commands`).

Logging is set up here (:func:`gtd.logs.setup_logging`) and nowhere else.
"""

from __future__ import annotations

import logging
import sys
import typing as t

from gtd import __version__, commands, journal
from gtd.exc import (
    EX_CONFIG,
    EX_USAGE,
    ConfigError,
    GtdError,
    IdentityError,
    RequestError,
    WorkdirMissing,
)
from gtd.logs import setup_logging

if t.TYPE_CHECKING:
    import argparse

    Subparsers = argparse._SubParsersAction


class Namespace:
    """Typed view of the parsed arguments (argparse fills any object with attributes).

    Not an ``argparse.Namespace``: ``gtd run`` never imports argparse (with gettext,
    0.4 MB of the daemon's RSS and a few ms of its start).
    """

    def __init__(self, **kwargs: object) -> None:
        self.__dict__.update(kwargs)

    command: str
    config: str | None
    verbose: bool
    config_command: str
    units_command: str
    force: bool
    now: bool
    identity: str
    action: str
    agent_command: str
    wait: bool
    json: bool
    identities: list[str]
    follow: bool
    lines: int | None
    since: str | None
    logs_identity: str | None


def create_parser() -> argparse.ArgumentParser:
    """The ``gtd`` parser with every subcommand."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="gtd",
        description=(
            "The Gas Town daemon as a systemd user service. It keeps the deacon agent "
            "alive in tmux, pokes it every heartbeat, and carries out lifecycle requests."
        ),
        epilog=(
            "Service: systemctl --user start|stop|reload gastown-daemon; "
            "logs: journalctl --user -u gastown-daemon; "
            "process lifecycle requests now: systemctl --user kill -s USR1 gastown-daemon"
        ),
    )
    parser.add_argument("--version", action="version", version=f"gtd {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $GTD_CONFIG, else $XDG_CONFIG_HOME/gastown/daemon.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create_run_subparser(sub)
    create_status_subparser(sub)
    create_logs_subparser(sub)
    create_config_subparser(sub)
    create_units_subparser(sub)
    create_request_subparser(sub)
    create_agent_subparser(sub)
    create_trust_subparser(sub)
    create_tmux_server_subparser(sub)
    return parser


def create_run_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd run``."""
    sub.add_parser(
        "run",
        help="run the daemon in the foreground (what the unit's ExecStart runs)",
        description=(
            "Run the daemon in the foreground until SIGTERM. Under systemd it sends "
            "READY=1/STATUS=/WATCHDOG=1/STOPPING=1 and logs to the journal. Signals: "
            "HUP reloads the config, USR1 processes lifecycle requests now. "
            "Exit status 78 means the configuration is invalid."
        ),
    )


def create_status_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd status [--json]``."""
    parser = sub.add_parser(
        "status",
        help="what systemd, state.json and tmux say about the daemon and its agents",
        description=(
            "Show the service as systemd sees it (active state since when, main PID, "
            "STATUS= text, restarts), the daemon's state.json (last heartbeat and how long "
            "ago), every supervised agent (alive, condition, since, restarts, backoff) and "
            "every other agent session, and pending and failed lifecycle requests. "
            "Exit status 0 when the service is active, 3 when it is not."
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (keys service, state, agents, lifecycle; see docs/status.md)",
    )


def _count(text: str) -> int:
    """A non-negative integer option value (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if value < 0:
        msg = f"not a count: {text}"
        raise ValueError(msg)
    return value


def create_logs_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd logs [-f] [-n N] [--identity IDENTITY] [--since TIME]``."""
    parser = sub.add_parser(
        "logs",
        help="the service's journal (what journalctl --user -u gastown-daemon shows)",
        description=(
            "Print the journal of gastown-daemon.service for this user: the service's own "
            "entries and what the user manager said about it, each with its GTD_* fields. "
            "Read with python-systemd's journal reader; journalctl --user -x -u "
            "gastown-daemon shows the same with catalog explanations."
        ),
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new entries until Ctrl-C"
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=_count,
        metavar="N",
        help=f"only the last N entries (with -f and without -n: {journal.FOLLOW_LINES})",
    )
    parser.add_argument(
        "--identity",
        dest="logs_identity",
        metavar="IDENTITY",
        help="only the service's entries about this agent (GTD_IDENTITY), e.g. deacon",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="from TIME on: YYYY-MM-DD [HH:MM[:SS]], HH:MM, today, yesterday, 10m, '2 hours ago'",
    )


def create_config_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd config check|show|init``."""
    parser = sub.add_parser(
        "config",
        help="check, show or create the config file",
        description="Validate, print or create the config file. Invalid config exits 78.",
    )
    csub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    csub.add_parser(
        "check",
        help="validate the config file",
        description="Validate the config file; print 'ok' or what is wrong (exit 78).",
    )
    csub.add_parser(
        "show",
        help="print the effective config as TOML",
        description="Print the effective config (file plus defaults) as TOML.",
    )
    init = csub.add_parser(
        "init",
        help="write a commented default config file",
        description="Write a commented default config file; never overwrites without --force.",
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")


def create_units_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd units install|uninstall``."""
    parser = sub.add_parser(
        "units",
        help="install or remove the systemd user units",
        description=(
            "Write gastown-daemon.service and gastown-tmux.service (pointing at this "
            "installation's gtd) to ~/.config/systemd/user and reload the user manager. "
            "The daemon's unit may write only to the configured town root: run this "
            "again after changing town_root."
        ),
    )
    usub = parser.add_subparsers(dest="units_command", metavar="ACTION", required=True)
    install = usub.add_parser(
        "install",
        help="write the units and reload",
        description=(
            "Write the units and run daemon-reload; --now also enables and starts them. "
            "Refuses when no user manager answers, and when the units there run another "
            "program (unless --force). Says how to keep the agents running after logout "
            "when linger is off."
        ),
    )
    install.add_argument("--now", action="store_true", help="enable and start them too")
    install.add_argument(
        "--force",
        action="store_true",
        help="replace units that run another program (e.g. another installation's gtd)",
    )
    usub.add_parser(
        "uninstall",
        help="stop and disable the daemon, remove the units",
        description=(
            "Disable and stop gastown-daemon.service, disable gastown-tmux.service "
            "(left running: stopping it would end every agent), remove both files."
        ),
    )


def create_request_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd request IDENTITY ACTION [--force]``."""
    parser = sub.add_parser(
        "request",
        help="queue a lifecycle request and wake the daemon",
        description=(
            "Queue a lifecycle request (cycle, restart, shutdown or stop) for an agent in "
            "the spool, then wake the daemon with SIGUSR1 through systemd so it is "
            "carried out at once. Prints the request id. The daemon acts only when the "
            "agent's state file has requesting_<action>: true; --force sets it first. "
            "A request the daemon cannot carry out ends in <town>/daemon/lifecycle/failed/ "
            "with the reason, and in the journal."
        ),
    )
    parser.add_argument("identity", help="mayor, deacon, <rig>-witness, gastown/crew/max, ...")
    parser.add_argument("action", help="cycle, restart, shutdown or stop")
    parser.add_argument(
        "--force", action="store_true", help="set the agent's requesting_<action> flag too"
    )


def create_agent_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd agent start|stop|restart|list``."""
    parser = sub.add_parser(
        "agent",
        help="start, stop, restart or list agents (same code path as the daemon)",
        description=(
            "Start, stop or restart one agent in its tmux session, with the same "
            "environment rules as the daemon (GT_ROLE, BD_ACTOR, GT_RIG, GT_REFINERY "
            "in the agent's own environment), or list every agent."
        ),
    )
    asub = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    for name, text in (
        ("start", "start the agent unless it is already alive"),
        ("stop", "stop the agent (its pane; the session when it is the only pane)"),
        ("restart", "restart the agent in its pane (other panes stay)"),
    ):
        one = asub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        one.add_argument("identity", help="mayor, deacon, <rig>-witness, gastown/crew/max, ...")
    asub.add_parser(
        "list",
        help="list agent sessions",
        description="List every agent: identity, session, pane, pane PID, alive or not.",
    )


def create_trust_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd trust [IDENTITY ...]``."""
    parser = sub.add_parser(
        "trust",
        help="accept Claude Code's folder-trust dialog for the town's agents, explicitly",
        description=(
            "Claude Code asks, in each new working directory, whether to trust the folder; "
            "gtd never answers that dialog for you. This command is your answer for the "
            "town: it marks each agent's workdir trusted in Claude Code's config "
            "($CLAUDE_CONFIG_DIR/.claude.json, else ~/.claude.json; CLAUDE_CONFIG_DIR may "
            "also be set in the agent environment file), keeping every other setting, and "
            "restarts an agent that is waiting at that dialog (it has not started work). "
            "Without IDENTITY: every supervised agent. Run it while no agent is working: "
            "a running Claude Code may rewrite the file from its own copy."
        ),
    )
    parser.add_argument(
        "identities",
        nargs="*",
        metavar="IDENTITY",
        help="deacon, mayor, <rig>-witness, ... (default: [supervise] agents)",
    )


def create_tmux_server_subparser(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """``gtd tmux-server``."""
    parser = sub.add_parser(
        "tmux-server",
        help="run the configured tmux server in the foreground (gastown-tmux.service)",
        description=(
            "Exec `tmux [-L SOCKET] -D` for the configured socket, so the agents' tmux "
            "server lives in its own unit and never in the daemon's cgroup. Exits 0 "
            "at once when a server already answers on that socket."
        ),
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="only wait (up to 10 s) until the server answers; exit 1 if it does not",
    )


def parse_run(argv: t.Sequence[str]) -> Namespace | None:
    """``gtd [--config PATH] [-v] run`` read by hand; None for anything else.

    The daemon's start skips building the whole argparse parser (every
    subcommand's, a few ms of the exec → READY path); any other form, help and
    errors included, goes to argparse as before.

    >>> args = parse_run(["--config", "x", "-v", "run"])
    >>> (args.config, args.verbose, args.command) if args else None
    ('x', True, 'run')
    >>> [parse_run(a) for a in (["run", "-h"], ["--conf", "x", "run"], ["--config", "-v", "run"])]
    [None, None, None]
    """
    if not argv or argv[-1] != "run":
        return None
    args = Namespace(config=None, verbose=False, command="run")
    rest = list(argv[:-1])
    while rest:
        arg = rest.pop(0)
        if arg in ("-v", "--verbose"):
            args.verbose = True
        elif arg == "--config" and rest and not rest[0].startswith("-"):
            args.config = rest.pop(0)
        elif arg.startswith("--config="):
            args.config = arg.partition("=")[2]
        else:
            return None
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gtd`` script; returns the exit status."""
    args = parse_run(sys.argv[1:] if argv is None else argv) or create_parser().parse_args(
        argv, namespace=Namespace()
    )
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    handlers: dict[str, t.Callable[[Namespace], int]] = {
        "run": commands.command_run,
        "status": commands.command_status,
        "logs": commands.command_logs,
        "config": commands.command_config,
        "units": commands.command_units,
        "request": commands.command_request,
        "agent": commands.command_agent,
        "tmux-server": commands.command_tmux_server,
        "trust": commands.command_trust,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as err:
        print(f"gtd: invalid configuration: {err}", file=sys.stderr)
        return EX_CONFIG
    except (IdentityError, RequestError) as err:
        print(f"gtd: {err}", file=sys.stderr)
        return EX_USAGE
    except WorkdirMissing as err:
        print(f"gtd: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if args.command == "run":
            raise  # the daemon logs its own I/O errors; one escaping here is a bug
        # Disk full, permission denied...: the environment, not a bug; no traceback.
        print(f"gtd: {args.command}: {err.strerror or err}: {err.filename or ''}", file=sys.stderr)
        return 1
    except GtdError as err:
        print(f"gtd: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
