"""The errors gtd raises: one base class, context in attributes and ``__str__``."""

from __future__ import annotations

import pathlib
import typing as t

EX_USAGE = 2
"""A command line or request gtd cannot take (argparse's own status for usage errors)."""
EX_NOT_RUNNING = 3
"""``gtd status``: the service is not active (systemctl status's LSB status 3)."""
EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus= stops restarts on it."""


class GtdError(Exception):
    """Base class of every error gtd raises on purpose."""


class CommandTimeout(Exception):
    """A bounded command did not finish in time; its process group was killed.

    Not a :class:`GtdError`: each caller decides what a timeout means where it is
    (a tmux call, ``gt mail``, ``systemctl``), and none may pass for a user mistake.
    """

    def __init__(self, argv: t.Sequence[str], timeout: float) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        super().__init__(f"{argv[0]}: no answer within {timeout:g}s")


class ConfigError(GtdError):
    """The configuration is invalid: names the file, the key and what is wrong."""

    def __init__(self, path: pathlib.Path | str | None, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = str(path) if path is not None else "<config>"
        if key:
            where = f"{where}: {key}"
        super().__init__(f"{where}: {problem}")


class IdentityError(GtdError):
    """An agent identity that is not one of SPEC's shapes."""

    def __init__(self, identity: str, problem: str) -> None:
        self.identity = identity
        self.problem = problem
        shown = identity if len(identity) <= 80 else identity[:77] + "..."
        super().__init__(f"invalid identity {shown!r}: {problem}")


class RequestError(GtdError):
    """A lifecycle request that can never be carried out as written."""


class TmuxError(GtdError):
    """A tmux command failed; renders as ``"<subcommand>: <stderr>"``."""

    def __init__(self, stderr: str, subcommand: str = "") -> None:
        self.stderr = stderr.strip()
        self.subcommand = subcommand
        super().__init__(f"{subcommand}: {self.stderr}" if subcommand else self.stderr)


class TmuxNotFound(TmuxError):
    """No tmux binary on PATH."""

    def __init__(self) -> None:
        super().__init__("tmux not found on PATH")


class TmuxTimeout(TmuxError):
    """A tmux command did not finish within its timeout (the server may be frozen)."""

    def __init__(self, subcommand: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"no answer within {timeout:g}s", subcommand=subcommand)


class NoServer(TmuxError):
    """The tmux server is not running (gtd never starts one itself)."""


class SystemdError(GtdError):
    """A systemctl call failed or timed out."""


class StateError(GtdError):
    """A state file could not be read or written."""


class SpoolError(GtdError):
    """The lifecycle spool cannot be used (not a directory, not trusted); nothing was changed."""


class WorkdirMissing(GtdError):
    """An agent's working directory does not exist (and gtd was not asked to create it)."""


class Stopping(GtdError):
    """A stop was requested while the daemon waited inside a step."""


class MailError(GtdError):
    """``gt mail`` failed or timed out; the request is kept and the step retried."""


class CommandNotFound(GtdError):
    """A command gtd must run is not in the PATH it searches; names both."""

    def __init__(self, command: str, path: str) -> None:
        self.command = command
        self.path = path
        super().__init__(f"{command!r} not found in PATH={path}")


class TrustError(GtdError):
    """Claude Code's config file cannot be read or changed; the message names the file."""


class BadTime(GtdError):
    """A ``--since`` value that is not a time gtd understands."""
