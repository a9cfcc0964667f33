"""What each ``gtd`` command does; :mod:`gtd.cli` parses the line and calls one of these.

Each takes the parsed arguments and returns the exit status; errors a user can fix
are raised (:mod:`gtd.exc`) and turned into one line by :func:`gtd.cli.main`.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import pathlib
import sys
import typing as t

from gtd import actions, agents, config, environment, journal, lifecycle, systemd
from gtd.exc import (
    EX_NOT_RUNNING,
    EX_USAGE,
    BadTime,
    ConfigError,
    GtdError,
    RequestError,
)
from gtd.identities import DEACON, identity_from_session, parse_identity
from gtd.request import parse_action
from gtd.screen import adapter
from gtd.spool import Spool
from gtd.tmux import PaneInfo, Tmux

if t.TYPE_CHECKING:
    from gtd.cli import Namespace

logger = logging.getLogger(__name__)


def load(args: Namespace) -> tuple[config.Config, pathlib.Path, bool]:
    """Read the config named by --config / GTD_CONFIG / the default path."""
    home = pathlib.Path.home()
    path, explicit = config.resolve_config_path(args.config, os.environ, home)
    return config.read_config(path, explicit=explicit, env=os.environ, home=home), path, explicit


def command_run(args: Namespace) -> int:
    """Run the daemon (imports the loop only here, to keep other commands light)."""
    from gtd.daemon import Daemon

    faulthandler.enable()  # a watchdog SIGABRT dumps every thread's stack to the journal
    cfg, path, explicit = load(args)
    daemon = Daemon(cfg, config_path=path, explicit=explicit)
    try:
        return daemon.run()
    except ConfigError:
        raise
    except GtdError as err:
        logger.critical("cannot run: %s", err)
        return 1


def command_status(args: Namespace) -> int:
    """Print (or ``--json``) what systemd, state.json, tmux and the spool say."""
    from gtd import status

    cfg, _, _ = load(args)
    ui = adapter(cfg.agent.ui)

    def observe(tmux: Tmux, pane: PaneInfo) -> tuple[str, str]:
        reading = ui.read(tmux.screen(pane.pane_id))
        return reading.condition.value, reading.detail

    report = status.gather(cfg, Tmux(cfg.tmux.socket), observe)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(status.render(report))
    return 0 if report["service"]["active_state"] == "active" else EX_NOT_RUNNING


def print_agents(panes: t.Sequence[PaneInfo], cfg: config.Config) -> int:
    """One line per agent pane found in *panes*; return how many."""
    count = 0
    for pane in panes:
        identity = identity_from_session(pane.session_name)
        if identity is None or agents.agent_pane(panes, identity) != pane:
            continue
        alive = agents.is_alive(pane, cfg.agent.alive_commands)
        print(
            f"{identity.dash}: session {pane.session_name} pane {pane.pane_id} "
            f"pid {pane.pane_pid} command {pane.current_command or '-'} "
            f"{'alive' if alive else 'NOT alive'}"
        )
        count += 1
    return count


def command_logs(args: Namespace) -> int:
    """Print (and with -f follow) the service's journal."""
    import datetime

    identity = parse_identity(args.logs_identity).dash if args.logs_identity else None
    try:
        since = (
            journal.parse_since(args.since, datetime.datetime.now().astimezone())
            if args.since is not None
            else None
        )
    except BadTime as err:
        print(f"gtd: {err}", file=sys.stderr)
        return EX_USAGE
    try:
        journal.show(
            lines=args.lines,
            since=since,
            identity=identity,
            follow=args.follow,
            write=lambda line: print(line, flush=True),
        )
    except BrokenPipeError:
        # `gtd logs | head`: the reader left; say nothing more (Python's own recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def command_config(args: Namespace) -> int:
    """``config check|show|init``."""
    home = pathlib.Path.home()
    path, explicit = config.resolve_config_path(args.config, os.environ, home)
    if args.config_command == "init":
        config.write_config_file(path, config.default_config_text(), force=args.force)
        print(f"wrote {path}")
        return 0
    cfg = config.read_config(path, explicit=explicit, env=os.environ, home=home)
    if args.config_command == "check":
        where = path if cfg.source is not None else f"{path} (absent: defaults)"
        print(f"ok: {where}")
        return check_environment(cfg, home)
    import tomli_w

    sys.stdout.write(tomli_w.dumps(config.to_dict(cfg)))
    return 0


def check_environment(cfg: config.Config, home: pathlib.Path) -> int:
    """Warn on stderr about what the daemon will meet; return 0 (the config is valid).

    That is: problems of the agent environment file, and each command it runs that is
    not on the PATH it searches, named with that PATH.
    """
    env_file = environment.env_file(os.environ, home)
    if problem := environment.env_file_problem(env_file):
        print(f"gtd: warning: {problem}", file=sys.stderr)
    path = environment.search_path(os.environ, home, environment.read_env_file(env_file))
    for what, command, required in environment.missing_commands(
        cfg.agent.argv[0], cfg.lifecycle.argv[0] if cfg.lifecycle.argv else "", path
    ):
        effect = "no agent can start" if required else "that step is skipped"
        print(
            f"gtd: warning: {what}: {command!r} not found in PATH={path} ({effect})",
            file=sys.stderr,
        )
    return 0


def command_units(args: Namespace) -> int:
    """``units install [--now] [--force]`` / ``units uninstall``."""
    unit_dir = systemd.user_unit_dir(os.environ, pathlib.Path.home())
    if args.units_command == "install":
        gtd = systemd.gtd_executable()
        cfg, _, _ = load(args)
        written = systemd.install_units(
            gtd, unit_dir, cfg.town_root, now=args.now, force=args.force
        )
        env_file = environment.env_file(os.environ, pathlib.Path.home())
        if environment.ensure_env_file(env_file):
            print(f"wrote {env_file} (the agents' environment; mode 0600)")
        for path in written:
            print(f"wrote {path}")
        print(
            f"units in {unit_dir} run {gtd} for town {cfg.town_root}"
            + ("; enabled and started" if args.now else "")
        )
        import getpass

        user = getpass.getuser()
        lingers = systemd.linger(user)
        if lingers is False:
            print(
                f"note: linger is off for {user}: your user manager, and the agents with it, "
                f"stop when you log out. To keep them running: sudo loginctl enable-linger {user}"
            )
        elif lingers is None:
            print(
                f"note: could not ask logind whether {user} lingers (loginctl show-user "
                f"{user}); if the agents must keep running after you log out: "
                f"sudo loginctl enable-linger {user}"
            )
        return 0
    for path in systemd.uninstall_units(unit_dir):
        print(f"removed {path}")
    return 0


def command_request(args: Namespace) -> int:
    """Queue a request, wake the daemon through systemd, print the id."""
    cfg, _, _ = load(args)
    import getpass  # only here: not in the daemon's start

    sender = os.environ.get("BD_ACTOR") or os.environ.get("GT_ROLE") or f"user:{getpass.getuser()}"
    identity, action = parse_identity(args.identity), parse_action(args.action)
    if args.force:
        workdir = identity.workdir(cfg.town_root)
        if identity != DEACON and not workdir.is_dir():
            msg = f"workdir of {identity.dash} does not exist: {workdir}; nothing queued"
            raise RequestError(msg)
        actions.set_request_flag(cfg.town_root, identity, action)
    spool = Spool(cfg.town_root)
    rid = lifecycle.submit(spool, identity, action, sender=sender, word=args.action).id
    print(rid)
    try:
        systemd.systemctl("kill", "--kill-who=main", "-s", "USR1", systemd.DAEMON_UNIT)
    except GtdError as err:
        print(
            f"gtd: request {rid} queued, but the daemon was not woken ({err}); "
            "it is carried out when gastown-daemon.service runs",
            file=sys.stderr,
        )
    return 0


def command_agent(args: Namespace) -> int:
    """``agent start|stop|restart IDENTITY`` and ``agent list``."""
    cfg, _, _ = load(args)
    tmux = Tmux(cfg.tmux.socket)
    if args.agent_command == "list":
        if not print_agents(tmux.list_panes(), cfg):
            print("no agents")
        return 0
    identity = parse_identity(args.identity)
    if args.agent_command == "stop":
        stopped = agents.stop_agent(tmux, identity)
        print(f"{identity.dash}: {'stopped' if stopped else 'not running'}")
        return 0
    agents.ensure_server(tmux, lambda: systemd.start_unit(systemd.TMUX_UNIT))
    panes = tmux.list_panes()
    if args.agent_command == "start" and agents.view(panes, identity, cfg).alive:
        print(f"{identity.dash}: already running")
        return 0
    pane = agents.start_agent(
        tmux, identity, cfg, panes=panes, create_workdir=identity == DEACON, path=agent_path()
    )
    print(f"{identity.dash}: started in {identity.session} pane {pane.pane_id} pid {pane.pane_pid}")
    return 0


def agent_path() -> str:
    """The PATH agents get, as the daemon computes it (:func:`environment.search_path`)."""
    home = pathlib.Path.home()
    file_env = environment.read_env_file(environment.env_file(os.environ, home))
    return environment.search_path(os.environ, home, file_env)


def command_trust(args: Namespace) -> int:
    """Mark the agents' workdirs trusted for Claude Code; restart those at the dialog."""
    from gtd import claude
    from gtd.screen import Condition

    cfg, _, _ = load(args)
    identities = [parse_identity(i) for i in args.identities] or list(cfg.supervise.agents)
    home = pathlib.Path.home()
    env = dict(os.environ) | environment.read_env_file(environment.env_file(os.environ, home))
    path = claude.config_path(env)
    workdirs = [i.workdir(cfg.town_root) for i in identities]
    added = claude.trust(workdirs, path=path)
    for workdir in workdirs:
        state = "trusted" if str(workdir) in added else "already trusted"
        print(f"{state}: {workdir} (in {path})")
    tmux = Tmux(cfg.tmux.socket)
    panes = tmux.list_panes()
    for identity in identities:
        view = agents.view(panes, identity, cfg)
        if not view.alive or view.pane is None:
            continue
        reading = claude.ClaudeCode().read(tmux.screen(view.pane.pane_id))
        if reading.condition is Condition.DIALOG and "trust" in reading.detail:
            agents.start_agent(tmux, identity, cfg, panes=panes, path=agent_path())
            print(f"{identity.dash}: was waiting at the folder-trust dialog; restarted")
    return 0


def command_tmux_server(args: Namespace) -> int:
    """Exec the tmux server in the foreground for the configured socket.

    A server already answering on that socket (a person's own default server) is
    left alone: exit 0 so systemd does not restart-loop on it.
    """
    cfg, _, _ = load(args)
    tmux = Tmux(cfg.tmux.socket)
    if args.wait:
        if agents.wait_for_server(tmux, agents.TMUX_START_WAIT):
            return 0
        print(f"gtd: tmux server {cfg.tmux.socket or '(default)'} did not answer")
        return 1
    if tmux.server_running():
        logger.info(
            "tmux server %s already runs outside this unit; leaving it alone",
            cfg.tmux.socket or "(default)",
        )
        return 0
    argv = tmux.base_argv()
    argv.remove("-N")
    env = environment.utf8_locale(os.environ)
    os.execve(argv[0], [*argv, "-D"], env)  # noqa: S606 - argv list, no shell
