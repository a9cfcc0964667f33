"""The environments gtd hands on: to the agents it starts and to its own helpers.

One file is the agents' environment: ``$XDG_CONFIG_HOME/gastown/agent.env``
(else ``~/.config/gastown/agent.env``), mode 0600, ``KEY=VALUE`` lines as
systemd's ``EnvironmentFile=`` reads them. ``gastown-tmux.service`` reads it, so
every pane of the agents' tmux server has it (secrets such as
``ANTHROPIC_API_KEY`` belong there, never in a unit file). Its ``PATH``, when it
sets one, is also the PATH gtd searches for the agent command and for ``gt``,
``bd`` and ``git``; without one, gtd searches the service's PATH plus the places
user installers put commands (``~/.local/bin`` for Claude Code's native
installer, an npm user prefix, ``~/bin``). Units run with the user manager's
PATH, not a login shell's, which is why those places are added.
"""

from __future__ import annotations

import os
import pathlib
import re
import typing as t

ENV_FILE_MODE = 0o600
IDENTITY_VARS = ("GT_ROLE", "GT_RIG", "GT_CREW", "GT_POLECAT", "GT_SESSION", "BD_ACTOR")
AGENT_UNSET = frozenset({*IDENTITY_VARS, "GT_REFINERY"})
"""Removed from every agent's environment unless its identity sets them."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_file(env: t.Mapping[str, str], home: pathlib.Path) -> pathlib.Path:
    """``$XDG_CONFIG_HOME/gastown/agent.env``, else ``~/.config/gastown/agent.env``."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = pathlib.Path(xdg) if xdg.startswith("/") else home / ".config"
    return base / "gastown" / "agent.env"


def parse_env_file(text: str) -> dict[str, str]:
    r"""``KEY=VALUE`` lines as ``EnvironmentFile=`` reads the simple cases.

    Blank lines and ``#``/``;`` comments are skipped, an optional ``export`` is
    allowed, a value in single or double quotes loses them. Lines that are no
    assignment are skipped (systemd warns about them; ``gtd config check`` does).

    >>> parse_env_file('# c\nA=1\nexport B="two words"\nC=\'x\'\nbad line\n')
    {'A': '1', 'B': 'two words', 'C': 'x'}
    """
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def bad_env_lines(text: str) -> list[int]:
    r"""Line numbers (from 1) of lines :func:`parse_env_file` skips that are not comments.

    >>> bad_env_lines("A=1\n\nnot an assignment\n# fine\n")
    [3]
    """
    bad = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and line[0] not in "#;" and not parse_env_file(line):
            bad.append(number)
    return bad


def read_env_file(path: pathlib.Path) -> dict[str, str]:
    """The variables in the agent environment file; ``{}`` when there is none.

    An unreadable file counts as none here; ``gtd config check`` reports it.
    """
    try:
        return parse_env_file(path.read_text(errors="replace"))
    except OSError:
        return {}


def user_bin_dirs(env: t.Mapping[str, str], home: pathlib.Path) -> list[pathlib.Path]:
    """Where user-level installers put commands, most specific first.

    Claude Code's native installer uses ``~/.local/bin``; ``npm install -g`` with a
    user prefix uses ``$NPM_CONFIG_PREFIX/bin`` or the ``prefix=`` of ``~/.npmrc``
    (commonly ``~/.npm-global``); ``~/bin`` is the traditional one.
    """
    dirs = [home / ".local" / "bin"]
    prefix = env.get("NPM_CONFIG_PREFIX") or env.get("npm_config_prefix") or _npmrc_prefix(home)
    if prefix:
        dirs.append(_expand(prefix, home) / "bin")
    dirs += [home / ".npm-global" / "bin", home / "bin"]
    return list(dict.fromkeys(dirs))


def _npmrc_prefix(home: pathlib.Path) -> str:
    try:
        text = (home / ".npmrc").read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "prefix":
            return value.strip()
    return ""


def _expand(text: str, home: pathlib.Path) -> pathlib.Path:
    if text == "~" or text.startswith("~/"):
        return home / text[2:]
    return pathlib.Path(text.replace("${HOME}", str(home)).replace("$HOME", str(home)))


def search_path(env: t.Mapping[str, str], home: pathlib.Path, file_env: t.Mapping[str, str]) -> str:
    """The PATH gtd searches and gives its agents and helpers.

    The agent environment file's ``PATH`` when it sets one; else the process's PATH
    (the user manager's, under systemd) followed by :func:`user_bin_dirs` that exist.
    """
    if file_env.get("PATH"):
        return file_env["PATH"]
    parts = (env.get("PATH") or DEFAULT_PATH).split(":")
    for directory in user_bin_dirs(env, home):
        if str(directory) not in parts and directory.is_dir():
            parts.append(str(directory))
    return ":".join(p for p in parts if p)


def which(command: str, path: str | None) -> str | None:
    """*command* resolved on *path* (as ``execvp`` would; None: ``os.defpath``), or None.

    What ``shutil.which`` does on POSIX, without importing ``shutil`` (and with it
    ``bz2``, ``lzma`` and ``fnmatch``: half a megabyte of the daemon's RSS).
    """
    if "/" in command:
        return command if _executable(command) else None
    for directory in (os.defpath if path is None else path).split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, command)
        if _executable(candidate):
            return candidate
    return None


def _executable(path: str) -> bool:
    return os.access(path, os.X_OK) and os.path.isfile(path)


def helper_env(env: t.Mapping[str, str], path: str) -> dict[str, str]:
    """The environment of commands gtd runs for itself (``gt``, ``git``, ``bd``).

    No agent identity leaks in; ``BD_ACTOR=daemon``; git never prompts.
    """
    out = {k: v for k, v in env.items() if k not in AGENT_UNSET}
    return out | {"PATH": path, "BD_ACTOR": "daemon", "GIT_TERMINAL_PROMPT": "0"}


def utf8_locale(env: t.Mapping[str, str]) -> dict[str, str]:
    """*env*, with ``LANG=C.UTF-8`` added when it names no UTF-8 locale.

    A user manager started outside a login session often has no ``LANG`` at all;
    the agents' panes (and the screens gtd reads from them) should still be UTF-8.

    >>> utf8_locale({})["LANG"], utf8_locale({"LANG": "de_DE.UTF-8"})["LANG"]
    ('C.UTF-8', 'de_DE.UTF-8')
    >>> utf8_locale({"LC_ALL": "C"})["LANG"]
    'C.UTF-8'
    """
    out = dict(env)
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        if value := out.get(name):
            if "utf-8" in value.lower() or "utf8" in value.lower():
                return out
            if name == "LC_ALL":
                del out[name]  # it would override LANG
            break
    out["LANG"] = "C.UTF-8"
    return out


READ_ONLY = "Read-only file system"


def sandbox_hint(output: str, town: pathlib.Path) -> str | None:
    """What to do when a helper's output says the service's sandbox refused a write.

    >>> out = "error: cannot open .git/FETCH_HEAD: Read-only file system"
    >>> sandbox_hint(out, pathlib.Path("/t"))[:40]
    'the service may write only to /t and its'
    """
    if READ_ONLY not in output:
        return None
    return (
        f"the service may write only to {town} and its own runtime directories; "
        "allow more with `systemctl --user edit gastown-daemon` and "
        "`[Service]` `ReadWritePaths=/the/path`, then restart it (see gtd(1))"
    )


ENV_FILE_TEMPLATE = """\
# The agents' environment (gastown-tmux.service reads this file: EnvironmentFile=).
# KEY=VALUE lines. Keep it mode 0600: secrets belong here, never in a unit file.
# After a change: systemctl --user restart gastown-tmux (ends the agents' sessions)
# or restart each agent (gtd agent restart IDENTITY) once the server has it.
#
# ANTHROPIC_API_KEY=sk-ant-...
#
# PATH, when set here, is also where gtd looks for the agent command, gt, bd and git.
# Left unset, gtd searches the service's PATH plus ~/.local/bin, your npm user prefix
# and ~/bin.
# PATH=/home/you/.local/bin:/usr/local/bin:/usr/bin:/bin
"""


def ensure_env_file(path: pathlib.Path) -> bool:
    """Create the agent environment file from :data:`ENV_FILE_TEMPLATE` if absent (0600).

    Returns whether it was created; an existing file is never touched.
    """
    from gtd import store

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        store.write_new(path, ENV_FILE_TEMPLATE.encode(), mode=ENV_FILE_MODE, replace=False)
    except FileExistsError:
        return False
    return True


def env_file_problem(path: pathlib.Path) -> str | None:
    """What is wrong with the agent environment file, or None (absent is fine)."""
    try:
        st = path.stat()
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{path}: cannot read: {err.strerror or err}"
    if st.st_mode & 0o077:
        return f"{path}: mode {st.st_mode & 0o777:04o} lets others read it; chmod 600 {path}"
    if bad := bad_env_lines(text):
        return f"{path}: line {bad[0]} is not KEY=VALUE (systemd ignores it)"
    return None


HELPERS = ("gt", "bd", "git")
"""Commands gtd runs for itself: the gt mail source, and pre-sync's git and bd."""


def missing_commands(agent: str, gt: str, path: str) -> list[tuple[str, str, bool]]:
    """``(what, command, required)`` for each command not found on *path*.

    The agent command is required (no agent can start without it); ``gt`` (when the
    mail source is on), ``bd`` and ``git`` are not.
    """
    wanted = [("agent.command", agent, True)]
    wanted += [("lifecycle.gt_command", gt, False)] if gt else []
    wanted += [("pre-sync", name, False) for name in HELPERS if name != "gt"]
    return [(what, cmd, req) for what, cmd, req in wanted if which(cmd, path) is None]
