#!/usr/bin/env python3
"""Generate the files every package installs from gtd's own code.

- ``packaging/gtd.catalog``: the journal catalog, from :data:`gtd.events.CATALOG`;
- ``packaging/gtd.1``: the gtd(1) man page, from :func:`gtd.cli.create_parser` plus the
  FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO sections written here;
- ``packaging/gtd.bash-completion``: bash completion, from the same parser.

The outputs are checked in, so building a package never imports gtd. Run this after
changing the CLI or the events (``python3 packaging/generate.py``); ``--check`` exits 1
and prints a diff when a checked-in file is stale (the tests run it). Output depends
only on the code, never on the terminal width, the date or the Python version.
"""

from __future__ import annotations

import argparse
import difflib
import os
import pathlib
import sys
import typing as t

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gtd import __version__, cli, events  # noqa: E402 - needs the repo on sys.path first

CATALOG = HERE / "gtd.catalog"
MANPAGE = HERE / "gtd.1"
COMPLETION = HERE / "gtd.bash-completion"
HEADER = "generated from gtd's code by packaging/generate.py; do not edit"


# --- journal catalog ----------------------------------------------------------------


def catalog_text() -> str:
    """The catalog file (journalctl(1) ``--update-catalog`` format) for every event.

    Each entry is ``-- <MESSAGE_ID>``, ``Subject:``, ``Defined-By: gtd``,
    ``Support:``, a blank line and the body; ``@FIELD@`` is filled in by journalctl.
    """
    out = [f"# Journal catalog of gtd, the Gas Town daemon ({HEADER})", ""]
    for event, entry in events.CATALOG.items():
        out += [
            f"-- {event.value}",
            f"Subject: {entry.subject}",
            "Defined-By: gtd",
            "Support: man:gtd(1)",
            "Documentation: man:gtd(1)",
            "",
            entry.body,
            "",
        ]
    return "\n".join(out)


# --- argparse walking -----------------------------------------------------------------


class Command(t.NamedTuple):
    """One (sub)command: its words after ``gtd``, its parser and its one-line help."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every command of *parser*, depth first, the top-level parser first (path ``()``)."""
    out = [Command((), parser, parser.description or "")]

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help or "" for c in action._choices_actions}
                for name, sub in action.choices.items():
                    out.append(Command((*path, name), sub, helps.get(name, "")))
                    walk(sub, (*path, name))

    walk(parser, ())
    return out


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options and positionals of *parser* a reader needs (no ``-h``, no subcommands)."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    """The names of *parser*'s direct subcommands, in their order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def takes_value(action: argparse.Action) -> bool:
    """Whether the option *action* reads the next word as its value."""
    return bool(action.option_strings) and action.nargs != 0


def metavar(action: argparse.Action) -> str:
    """The placeholder of *action*'s value (its metavar, else its dest in capitals)."""
    if isinstance(action.metavar, str):
        return action.metavar
    return action.dest.upper()


def help_text(action: argparse.Action) -> str:
    """*action*'s help with argparse's ``%(default)s``-style fields filled in."""
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": "gtd"}
    return text


# --- man page -----------------------------------------------------------------------


def roff(text: str) -> str:
    r"""Escape *text* for a roff line: backslashes, hyphens, a leading dot or quote.

    >>> roff(".hidden -x \\y")
    '\\&.hidden \\-x \\ey'
    """
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def synopsis(cmd: Command) -> str:
    """A roff synopsis line: bold words, bracketed options, italic placeholders."""
    words = [f"\\fB{roff(' '.join(('gtd', *cmd.path)))}\\fR"]
    for action in options(cmd.parser):
        if action.option_strings:
            flag = f"\\fB{roff(action.option_strings[-1])}\\fR"
            if takes_value(action):
                flag += f" \\fI{roff(metavar(action))}\\fR"
            words.append(flag if action.required else f"[{flag}]")
        else:
            words.append(f"\\fI{roff(metavar(action))}\\fR")
    if subcommand_names(cmd.parser):
        words.append("\\fICOMMAND\\fR" if not cmd.path else "\\fIACTION\\fR")
        words.append("...")
    return " ".join(words)


def option_items(parser: argparse.ArgumentParser) -> list[str]:
    """``.TP`` items for *parser*'s options and positionals."""
    out = []
    for action in options(parser):
        if action.option_strings:
            value = f" \\fI{roff(metavar(action))}\\fR" if takes_value(action) else ""
            label = ", ".join(f"\\fB{roff(s)}\\fR{value}" for s in action.option_strings)
        else:
            label = f"\\fI{roff(metavar(action))}\\fR"
        out += [".TP", label, roff(help_text(action))]
    return out


MAN_TAIL = r"""
.SH FILES
.TP
\fI$XDG_CONFIG_HOME/gastown/daemon.toml\fR (else \fI~/.config/gastown/daemon.toml\fR)
The configuration; \fB\-\-config\fR and \fBGTD_CONFIG\fR name another.
\fBgtd config init\fR writes a commented one.
.TP
\fI<town>/daemon/state.json\fR
The daemon's state (running, pid, started_at, last_heartbeat, heartbeat_count),
written atomically. No PID file is read or written anywhere.
.TP
\fI<town>/daemon/lifecycle/\fR{\fItmp\fR,\fInew\fR,\fIcur\fR,\fIfailed\fR}\fI/\fR
The lifecycle request spool: one JSON file per request; \fIfailed/\fR keeps
requests that could not be carried out, with the reason.
.TP
\fI/usr/lib/systemd/user/gastown\-daemon.service\fR, \fIgastown\-tmux.service\fR
The units a distribution package installs (for \fI/usr/bin/gtd\fR).
.TP
\fI~/.config/systemd/user/gastown\-daemon.service\fR, \fIgastown\-tmux.service\fR
The units \fBgtd units install\fR writes for the \fBgtd\fR it runs from and the
configured town; they take precedence over the packaged ones.
.TP
\fI/usr/lib/systemd/catalog/gtd.catalog\fR
The journal catalog: \fBjournalctl \-x\fR explains each event gtd logs with a
MESSAGE_ID and says what to do.
.TP
\fI$XDG_CONFIG_HOME/gastown/agent.env\fR (else \fI~/.config/gastown/agent.env\fR)
The agents' environment: \fBKEY=VALUE\fR lines that \fIgastown\-tmux.service\fR
reads (\fBEnvironmentFile=\fR), so every agent pane has them. Secrets the agents
need (\fBANTHROPIC_API_KEY\fR) belong here, mode 0600, never in a unit file.
\fBgtd units install\fR writes a commented template. A \fBPATH\fR set here is
also where gtd looks for the agent command, \fBgt\fR, \fBbd\fR and \fBgit\fR.
.SH ENVIRONMENT
.TP
\fBGTD_CONFIG\fR
The config file to read, unless \fB\-\-config\fR is given.
.TP
\fBXDG_CONFIG_HOME\fR
Where the config file (\fIgastown/daemon.toml\fR) and the user units
(\fIsystemd/user/\fR) are looked for; default \fI~/.config\fR.
.TP
\fBGT_TOWN_ROOT\fR
The town root when the config sets no \fBtown_root\fR; default \fI~/gt\fR.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBJOURNAL_STREAM\fR
Set by systemd for \fBgtd run\fR: where READY/STATUS/WATCHDOG go, the watchdog
interval, and whether stderr is the journal (then gtd logs there with structured
GTD_* fields).
.TP
\fBPATH\fR
Units run with the user manager's PATH, not a login shell's. gtd searches that
PATH plus \fI~/.local/bin\fR (Claude Code's native installer), the npm user prefix
(\fBNPM_CONFIG_PREFIX\fR or \fBprefix=\fR in \fI~/.npmrc\fR) and \fI~/bin\fR, or
exactly the \fBPATH\fR in the agent environment file, and gives that PATH to every
agent and helper. A command it cannot find is named, with the PATH, in STATUS and
by \fBgtd config check\fR.
.TP
\fBGT_ROLE\fR, \fBBD_ACTOR\fR, \fBGT_RIG\fR, \fBGT_REFINERY\fR
Set by gtd in every agent's own environment (never inherited from the daemon's).
\fBgtd request\fR names its sender from \fBBD_ACTOR\fR or \fBGT_ROLE\fR.
.SH EXIT STATUS
.TP
.B 0
Success; for \fBgtd status\fR: the service is active.
.TP
.B 1
An error other than those below (a file could not be written, systemd or tmux did
not answer, ...); the message on standard error says what.
.TP
.B 2
Usage error: an unknown command or option, an invalid identity, action or time.
.TP
.B 3
\fBgtd status\fR: the service is not active.
.TP
.B 78
The configuration is invalid (EX_CONFIG); the message names the file and the key.
The unit does not restart on it (\fBRestartPreventExitStatus=78\fR).
.TP
.B 130
Interrupted (for example \fBgtd logs \-f\fR ended with Ctrl\-C).
.SH EXAMPLES
.nf
systemctl \-\-user enable \-\-now gastown\-daemon   # packaged units
gtd units install \-\-now                          # pip or pipx install
gtd status
journalctl \-\-user \-x \-u gastown\-daemon
gtd logs \-f \-\-identity deacon
systemctl \-\-user kill \-s USR1 gastown\-daemon     # process requests now
.fi
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.service\fR(5),
\fBsystemd.unit\fR(5), \fBloginctl\fR(1), \fBtmux\fR(1).
The operator's guide: \fIdocs/operating.md\fR in gtd's source.
"""


def manpage_text() -> str:
    """The gtd(1) man page: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS, then MAN_TAIL."""
    parser = cli.create_parser()
    cmds = commands(parser)
    top = cmds[0]
    out = [
        f'.\\" {HEADER}',
        f'.TH GTD 1 "" "gtd {__version__}" "User Commands"',
        ".SH NAME",
        "gtd \\- the Gas Town daemon as a systemd user service",
        ".SH SYNOPSIS",
        synopsis(top),
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        ".PP",
        roff(parser.epilog or ""),
        ".PP",
        "Every command takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR: what it does and its options.",
        ".SH OPTIONS",
        *option_items(parser),
        ".SH COMMANDS",
    ]
    for cmd in cmds[1:]:
        out += [f'.SS "{roff(" ".join(("gtd", *cmd.path)))}"', synopsis(cmd), ".PP"]
        out.append(roff(cmd.parser.description or cmd.help))
        out += option_items(cmd.parser)
    return "\n".join(out) + MAN_TAIL


# --- bash completion ----------------------------------------------------------------

COMPLETION_BODY = r"""
_gtd() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local path=gtd w i skip=0
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if ((skip)); then skip=0; continue; fi
        if [[ " ${_gtd_valued[$path]} " == *" $w "* ]]; then skip=1; continue; fi
        [[ $w == -* ]] && continue
        if [[ " ${_gtd_commands[$path]} " == *" $w "* ]]; then
            path="$path $w"
        fi
    done
    if ((skip)); then
        case $prev in
            --config) COMPREPLY=($(compgen -f -- "$cur")) ;;
        esac
        return 0
    fi
    if [[ $cur == -* || -z ${_gtd_commands[$path]} ]]; then
        COMPREPLY=($(compgen -W "${_gtd_options[$path]}" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "${_gtd_commands[$path]}" -- "$cur"))
    fi
    return 0
}
complete -F _gtd gtd
"""


def completion_text() -> str:
    """A bash completion script: per command path, its subcommands and options.

    ``_gtd_commands["gtd PATH"]`` lists the subcommands after ``gtd PATH``,
    ``_gtd_options[PATH]`` its options, ``_gtd_valued[PATH]`` the options that take a
    value (so the value is not read as a subcommand).
    """
    parser = cli.create_parser()
    out = [
        f"# bash completion for gtd(1) ({HEADER})",
        "declare -gA _gtd_commands=() _gtd_options=() _gtd_valued=()",
    ]
    for cmd in commands(parser):
        key = " ".join(("gtd", *cmd.path))  # bash allows no empty key
        opts = [s for a in cmd.parser._actions for s in a.option_strings]
        valued = [s for a in options(cmd.parser) if takes_value(a) for s in a.option_strings]
        out.append(f'_gtd_commands[{key!r}]="{" ".join(subcommand_names(cmd.parser))}"')
        out.append(f'_gtd_options[{key!r}]="{" ".join(opts)}"')
        out.append(f'_gtd_valued[{key!r}]="{" ".join(valued)}"')
    return "\n".join(out) + "\n" + COMPLETION_BODY


# --- main ---------------------------------------------------------------------------

OUTPUTS: dict[pathlib.Path, t.Callable[[], str]] = {
    CATALOG: catalog_text,
    MANPAGE: manpage_text,
    COMPLETION: completion_text,
}


def main(argv: list[str] | None = None) -> int:
    """Write every output, or with ``--check`` say which is stale (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    # argparse reads COLUMNS for help text; nothing here may depend on the terminal.
    os.environ["COLUMNS"] = "100"
    stale = 0
    for path, make in OUTPUTS.items():
        text = make()
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        if args.check:
            stale += 1
            rel = path.relative_to(HERE.parent)
            diff = difflib.unified_diff(
                old.splitlines(),
                text.splitlines(),
                f"{rel} (checked in)",
                f"{rel} (code)",
                lineterm="",
            )
            print("\n".join(diff))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(
            f"{stale} generated file(s) stale: run python3 packaging/generate.py", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
