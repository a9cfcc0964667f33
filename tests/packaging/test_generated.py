"""The generated files every package installs: catalog, man page, bash completion.

Each is checked against gtd's code by a walk of its own here (not the generator's),
and through the real tool that reads it: journalctl, groff, bash.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys

import pytest

from gtd import cli, events

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"


def command_paths(
    parser: argparse.ArgumentParser,
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command path of *parser*, ``()`` for gtd itself."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[(*path, name)] = sub
                    walk(sub, (*path, name))

    walk(parser, ())
    return found


def test_checked_in_files_match_the_code() -> None:
    """`packaging/generate.py --check` finds catalog, man page and completion up to date."""
    proc = subprocess.run(
        [sys.executable, str(PACKAGING / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (0, "") == (proc.returncode, proc.stdout), proc.stderr


def test_check_reports_a_stale_file(tmp_path: pathlib.Path) -> None:
    """A checked-in file that differs from the code makes --check fail with a diff."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "gtd", copy / "gtd")
    shutil.copytree(PACKAGING, copy / "packaging", ignore=shutil.ignore_patterns("debian"))
    catalog = copy / "packaging" / "gtd.catalog"
    catalog.write_text(catalog.read_text().replace("Subject: Gas Town agent", "Subject: x"))
    proc = subprocess.run(
        [sys.executable, str(copy / "packaging" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert 1 == proc.returncode
    assert "+Subject: Gas Town agent @GTD_IDENTITY@ started" in proc.stdout


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl")
def test_catalog_is_read_by_journalctl(tmp_path: pathlib.Path) -> None:
    """`journalctl --update-catalog` takes the file and knows every event's id and subject."""
    catalog_dir = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(PACKAGING / "gtd.catalog", catalog_dir / "gtd.catalog")
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--list-catalog"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    expected = sorted(f"{e.value} gtd: {entry.subject}" for e, entry in events.CATALOG.items())
    assert expected == sorted(listed)
    assert set(events.Event) == set(events.CATALOG)
    dumped = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--dump-catalog", events.Event.CRASH_LOOP.value],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert events.CATALOG[events.Event.CRASH_LOOP].body.split("\n")[0] in dumped


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_man_page_documents_every_command_and_option() -> None:
    """gtd(1) renders without groff warnings and has every subcommand, option and section."""
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-rLL=200n", "-P-cbou", str(PACKAGING / "gtd.1")],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    assert "" == proc.stderr
    text = proc.stdout.replace("\u2010", "-")
    for path, parser in command_paths(cli.create_parser()).items():
        if path:
            assert f"   {' '.join(('gtd', *path))}\n" in text, path
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, (path, flag)
            if action.help and not isinstance(action, argparse._HelpAction):
                assert " ".join(action.help.split()[:4]) in " ".join(text.split()), action.help
    for section in ("FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{section}\n" in text


def complete(line: str, script: pathlib.Path = PACKAGING / "gtd.bash-completion") -> list[str]:
    """What bash offers for the last word of *line* (`gtd ...`), through the script."""
    words = line.split(" ")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_gtd\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        check=True,
    )
    return [w for w in proc.stdout.splitlines() if w]


def test_completion_offers_every_subcommand_and_option() -> None:
    """After each command path, bash offers exactly its subcommands, and with `-` its options."""
    for path, parser in command_paths(cli.create_parser()).items():
        subs = [
            name
            for a in parser._actions
            if isinstance(a, argparse._SubParsersAction)
            for name in a.choices
        ]
        prefix = " ".join(("gtd", *path))
        if subs:
            assert sorted(subs) == sorted(complete(f"{prefix} ")), path
            for name in subs:
                assert name in complete(f"{prefix} {name[:2]}"), (path, name)
        flags = {f for a in parser._actions for f in a.option_strings}
        assert flags == set(complete(f"{prefix} -")), path


def test_completion_skips_option_values() -> None:
    """A value after --config is not read as a subcommand; files are offered for it."""
    assert ["check", "init", "show"] == sorted(complete("gtd --config units config "))
    assert str(PACKAGING / "gtd.1") in complete(f"gtd --config {PACKAGING}/gtd.")


def test_units_point_to_the_man_page() -> None:
    """Both units, rendered and packaged, name gtd(1) first in Documentation=."""
    from gtd import systemd

    for name, text in systemd.render_units("/usr/bin/gtd").items():
        for unit in (text, (REPO / "units" / name).read_text()):
            docs = [ln for ln in unit.splitlines() if ln.startswith("Documentation=")]
            assert 1 == len(docs), name
            assert docs[0].removeprefix("Documentation=").split()[0] == "man:gtd(1)", name
