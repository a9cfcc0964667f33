"""The systemd boundary: ``systemctl --user`` calls and the user units gtd installs.

gtd talks to its user manager only through ``systemctl --user`` with a timeout,
which works with or without a session D-Bus (it falls back to the manager's
private socket).
"""

from __future__ import annotations

import logging
import pathlib
import time
import typing as t

from gtd.exc import CommandTimeout, SystemdError
from gtd.proc import run as run_bounded
from gtd.store import atomic_write

logger = logging.getLogger(__name__)

DAEMON_UNIT = "gastown-daemon.service"
TMUX_UNIT = "gastown-tmux.service"
SYSTEMCTL_TIMEOUT = 30.0

DAEMON_TEMPLATE = """\
[Unit]
Description=Gas Town daemon (gtd): keeps the deacon agent alive and carries out lifecycle requests
Documentation=man:gtd(1) https://github.com/steveyegge/gastown
Wants={tmux_unit}
After={tmux_unit}
StartLimitIntervalSec=10min
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
# The sandbox below lets the daemon write only to the town, so it cannot create the
# town itself; '+' runs this one step without it (a packaged install on a new account).
ExecStartPre=+/bin/mkdir -p {town}
ExecStart={gtd} run
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
RestartPreventExitStatus=78
WatchdogSec=30s
TimeoutStartSec=60s
TimeoutStopSec=20s
# Only the daemon and its short-lived helpers live in this cgroup; agents live in
# {tmux_unit}, so stopping or killing this unit never reaches an agent. mixed: SIGTERM
# goes to the daemon alone, which finishes its step (a poke, a request) before exiting.
KillMode=mixed
# Hardening that works in a user manager (PrivateUsers=yes gives it the namespaces).
# The service may write only to the town; tmux, journald, systemd and git's remotes are
# reached through sockets, which a read-only file system does not block. Network stays
# open for pre-sync's git fetch. ProtectKernelTunables, ProtectControlGroups and
# ProtectProc are left out: each hid the notify socket or /proc in a user manager here.
PrivateUsers=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=-{town}
PrivateDevices=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RemoveIPC=yes
KeyringMode=private
UMask=0077
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6

[Install]
WantedBy=default.target
"""

TMUX_TEMPLATE = """\
[Unit]
Description=Gas Town tmux server (the agents' home, outside the daemon's cgroup)
Documentation=man:gtd(1) man:tmux(1)

[Service]
Type=simple
ExecStart={gtd} tmux-server
# "active" only once the server answers, so the daemon (After=) never races its socket.
ExecStartPost={gtd} tmux-server --wait
# The agents' environment, secrets included (0600; see gtd(1), ENVIRONMENT). No
# NoNewPrivileges= or other sandboxing here: every pane inherits it, and agent panes
# (and a person's own sessions on this server) must behave as in a terminal (sudo).
EnvironmentFile=-%E/gastown/agent.env
# Each pane holds a descriptor; at the manager's default 1024 a big town's server stops
# answering (it spins on accept()).
LimitNOFILE=65536
# Stopping this unit ends every agent session; the daemon never does that itself.
KillMode=control-group
Restart=on-failure
RestartSec=1s

[Install]
WantedBy=default.target
"""

UNITS = {DAEMON_UNIT: DAEMON_TEMPLATE, TMUX_UNIT: TMUX_TEMPLATE}


PACKAGED_TOWN = "%h/gt"
"""The town in the packaged units: the default town root, as a unit specifier."""


def render_units(gtd: str, town: str = PACKAGED_TOWN) -> dict[str, str]:
    """The unit files for a ``gtd`` executable at *gtd* whose town root is *town*.

    The town is the one directory the hardened daemon may write to.
    """
    return {
        name: template.format(gtd=gtd, tmux_unit=TMUX_UNIT, town=town)
        for name, template in UNITS.items()
    }


def user_unit_dir(env: t.Mapping[str, str], home: pathlib.Path) -> pathlib.Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (else ``~/.config/systemd/user``)."""
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return pathlib.Path(base) / "systemd" / "user"


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT, check: bool = True) -> str:
    """Run ``systemctl --user ARGS``; return stdout.

    Raises
    ------
    SystemdError
        systemctl is missing, timed out, or (with *check*) failed.
    """
    argv = ["systemctl", "--user", *args]
    try:
        proc = run_bounded(argv, timeout=timeout)
    except FileNotFoundError:
        msg = "systemctl not found on PATH"
        raise SystemdError(msg) from None
    except CommandTimeout:
        msg = f"systemctl --user {' '.join(args)}: no answer within {timeout:g}s"
        raise SystemdError(msg) from None
    if check and proc.returncode != 0:
        err = proc.stderr.strip() or f"exit status {proc.returncode}"
        msg = f"systemctl --user {' '.join(args)}: {err}"
        raise SystemdError(msg)
    return proc.stdout


def parse_show(text: str) -> dict[str, str]:
    r"""Parse ``systemctl show`` ``KEY=VALUE`` lines.

    >>> parse_show("ActiveState=active\nStatusText=a=b\n")
    {'ActiveState': 'active', 'StatusText': 'a=b'}
    """
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def show(unit: str, *props: str, timestamp: str = "") -> dict[str, str]:
    """Properties of *unit* as the user manager knows them (``--timestamp=`` if given)."""
    extra = (f"--timestamp={timestamp}",) if timestamp else ()
    return parse_show(systemctl("show", unit, "-p", ",".join(props), *extra))


def start_unit(unit: str) -> None:
    """Queue a start of *unit* and return at once (``--no-block``).

    Not waiting matters: if a stop of the caller's own unit is queued, a blocking
    start behind it would hold the caller until systemd's stop timeout.
    """
    systemctl("start", "--no-block", unit)


def start_tmux_server(socket: str, config_path: pathlib.Path | None) -> None:
    """Start the agents' tmux server for *socket* under systemd, without waiting.

    Normally that is :data:`TMUX_UNIT`. If that unit is already up it serves another
    socket (the config moved to a new one on reload), and restarting it would end the
    agents there; so this socket's server gets a transient unit of its own instead.
    """
    state = ""
    deadline = time.monotonic() + 1.0
    while True:
        state = show(TMUX_UNIT, "ActiveState").get("ActiveState", "")
        # "deactivating": its server just exited; it is inactive in a moment.
        if state != "deactivating" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if state not in ("active", "activating", "reloading"):
        start_unit(TMUX_UNIT)
        return
    if state != "active":
        return  # starting: it serves the configured socket; the caller waits for it
    argv = [gtd_executable()]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    unit = f"gastown-tmux-{socket or 'default'}.service"
    run = ["systemd-run", "--user", "--collect", f"--unit={unit}", "--no-block"]
    run += ["--description=Gas Town tmux server (transient, after a socket change)"]
    try:
        result = run_bounded([*run, "--", *argv, "tmux-server"], timeout=SYSTEMCTL_TIMEOUT)
    except (FileNotFoundError, CommandTimeout) as err:
        msg = f"systemd-run {unit}: {err}"
        raise SystemdError(msg) from None
    if result.returncode != 0:
        msg = f"systemd-run {unit}: {result.stderr.strip() or result.returncode}"
        raise SystemdError(msg)
    logger.info("started tmux server for socket %s in transient %s", socket or "(default)", unit)


NO_MANAGER_HELP = (
    "gtd runs as a systemd user service, so it needs your user manager: log in so that "
    "one starts (a desktop, console or ssh login; su and sudo start none), or as root run "
    "`loginctl enable-linger USER` and then, as USER, `export XDG_RUNTIME_DIR=/run/user/$(id -u)`"
)


def check_user_manager() -> None:
    """Make sure ``systemctl --user`` reaches a user manager.

    Raises
    ------
    SystemdError
        None answers (no login session, no ``XDG_RUNTIME_DIR``, a plain ``su``); the
        message quotes systemctl and says what to do.
    """
    try:
        systemctl("show", "-p", "Version", timeout=10)
    except SystemdError as err:
        msg = f"no systemd user manager answers ({err}). {NO_MANAGER_HELP}"
        raise SystemdError(msg) from None


def linger(user: str) -> bool | None:
    """Whether logind keeps *user*'s manager running after logout; None when unknown."""
    try:
        proc = run_bounded(["loginctl", "show-user", user, "-p", "Linger", "--value"], timeout=10)
    except (FileNotFoundError, CommandTimeout):
        return None
    answer = proc.stdout.strip()
    return {"yes": True, "no": False}.get(answer) if proc.returncode == 0 else None


def unit_exec(text: str) -> str | None:
    r"""The executable of a unit's first ``ExecStart=``, or None.

    >>> unit_exec("[Service]\nExecStart=-/usr/bin/gtd run\n")
    '/usr/bin/gtd'
    """
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ExecStart" and value.split():
            return value.split()[0].lstrip("-@:+!")
    return None


def install_units(
    gtd: str,
    unit_dir: pathlib.Path,
    town: pathlib.Path,
    *,
    now: bool,
    reload: bool = True,
    force: bool = False,
) -> list[pathlib.Path]:
    """Write the units for *gtd* and *town* into *unit_dir*, reload, with *now* enable --now.

    With *reload*, first checks that a user manager answers, and writes nothing when
    none does. Creates the town root (the service itself may not create it: its
    home is read-only). Idempotent: files are rewritten atomically only when their
    text changed.

    Raises
    ------
    SystemdError
        No user manager answers (with *reload*); or, without *force*, a unit already
        in *unit_dir* runs another program than *gtd* (another installation of gtd,
        or something else): nothing is written then.
    """
    if reload:
        check_user_manager()
    rendered = render_units(gtd, str(town))
    for name in rendered:
        path = unit_dir / name
        if force or not path.is_file():
            continue
        other = unit_exec(path.read_text(errors="replace"))
        if other is not None and other != gtd:
            msg = (
                f"{path} runs {other}, not this gtd ({gtd}); nothing written. Use that "
                f"installation, or replace its units with: {gtd} units install --force"
            )
            raise SystemdError(msg)
    unit_dir.mkdir(parents=True, exist_ok=True)
    town.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.items():
        path = unit_dir / name
        if not path.exists() or path.read_text() != text:
            atomic_write(path, text.encode())
            written.append(path)
    if reload:
        systemctl("daemon-reload")
    if now:
        systemctl("enable", "--now", TMUX_UNIT, DAEMON_UNIT)
    return written


def uninstall_units(unit_dir: pathlib.Path) -> list[pathlib.Path]:
    """Disable and stop the daemon unit, remove both unit files, reload.

    The tmux unit is disabled but not stopped: stopping it would end every agent.
    Units a distribution package installed (in ``/usr/lib/systemd/user``) are not
    touched; only *unit_dir*'s.

    Raises
    ------
    SystemdError
        No user manager answers (checked first: nothing is removed then).
    """
    check_user_manager()
    systemctl("disable", "--now", DAEMON_UNIT, check=False)
    systemctl("disable", TMUX_UNIT, check=False)
    removed = []
    for name in UNITS:
        path = unit_dir / name
        if path.exists():
            path.unlink()
            removed.append(path)
    systemctl("daemon-reload")
    return removed


def gtd_executable() -> str:
    """The absolute path of this installation's ``gtd`` script (next to its python)."""
    import sys

    candidate = pathlib.Path(sys.executable).parent / "gtd"
    if candidate.exists():
        return str(candidate)
    argv0 = pathlib.Path(sys.argv[0])
    if argv0.name == "gtd" and argv0.exists():
        return str(argv0.resolve())
    msg = f"cannot find the gtd executable next to {sys.executable}"
    raise SystemdError(msg)
