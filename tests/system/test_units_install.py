"""`gtd units install` as a user runs it: no manager, linger, someone else's units.

logind cannot run here (it needs a system manager), so the linger answers come from a
stand-in `loginctl` first on PATH that records how it was asked; the real loginctl,
which finds no logind, covers "unknown".
"""

from __future__ import annotations

import pathlib
import secrets

from tests.system.towns import DAEMON, Town

FAKE_LOGINCTL = """#!/bin/sh
echo "$*" >> "$0.calls"
echo {answer}
"""


def fake_loginctl(town: Town, answer: str) -> tuple[dict[str, str], pathlib.Path]:
    """A PATH whose loginctl answers *answer*; and the file recording its arguments."""
    script = town.um.write_file(f"fakebin-{answer}/loginctl", FAKE_LOGINCTL.format(answer=answer))
    script.chmod(0o755)
    calls = script.with_name("loginctl.calls")
    calls.unlink(missing_ok=True)
    return {"PATH": f"{script.parent}:/usr/local/bin:/usr/bin:/bin"}, calls


def test_no_user_manager_is_explained_and_nothing_written(town: Town) -> None:
    """Without a reachable manager: exit 1, what to do, no traceback, no file written."""
    config_home = town.um.home / f"other-config-{secrets.token_hex(4)}"
    env = {"XDG_RUNTIME_DIR": "/nonexistent", "XDG_CONFIG_HOME": str(config_home)}
    proc = town.um.run(str(town.gtd), "units", "install", check=False, env=env)
    assert (1, "") == (proc.returncode, proc.stdout)
    assert "no systemd user manager answers" in proc.stderr
    assert "loginctl enable-linger" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (config_home / "systemd").exists()
    proc = town.um.run(str(town.gtd), "units", "uninstall", check=False, env=env)
    assert (1, "no systemd user manager answers") == (proc.returncode, proc.stderr[5:36])


def test_linger_off_says_how_to_keep_agents(town: Town) -> None:
    """Linger off: the output says agents stop at logout and gives enable-linger."""
    env, calls = fake_loginctl(town, "no")
    out = town.um.run(str(town.gtd), "units", "install", env=env).stdout
    user = town.um.user
    assert f"sudo loginctl enable-linger {user}" in out
    assert "stop when you log out" in out
    assert [f"show-user {user} -p Linger --value"] == calls.read_text().splitlines()


def test_linger_on_says_nothing_and_unknown_says_how_to_check(town: Town) -> None:
    """Linger on: no note. No logind (the real loginctl here): how to check and enable it."""
    env, _ = fake_loginctl(town, "yes")
    assert "linger" not in town.um.run(str(town.gtd), "units", "install", env=env).stdout
    out = town.gtd_cmd("units", "install")
    assert f"could not ask logind whether {town.um.user} lingers" in out
    assert f"sudo loginctl enable-linger {town.um.user}" in out


def test_units_of_another_gtd_are_kept_unless_forced(town: Town) -> None:
    """Units running another gtd are not overwritten; --force replaces them and they run."""
    unit = town.um.unit_dir / DAEMON
    other = unit.read_text().replace(str(town.gtd), "/usr/bin/gtd")
    town.um.write_file(unit.relative_to(town.um.home), other)
    proc = town.um.run(str(town.gtd), "units", "install", check=False)
    assert 1 == proc.returncode
    assert f"{unit} runs /usr/bin/gtd, not this gtd ({town.gtd})" in proc.stderr
    assert "--force" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert other == unit.read_text()
    out = town.gtd_cmd("units", "install", "--force")
    assert f"wrote {unit}" in out
    assert f"ExecStart={town.gtd} run" in unit.read_text().splitlines()
    town.start()
    assert str(town.gtd) in pathlib.Path(f"/proc/{town.main_pid()}/cmdline").read_text()
    # The same gtd for another town is no other gtd: rewritten without --force.
    elsewhere = unit.read_text().replace(f"ReadWritePaths=-{town.root}", "ReadWritePaths=-/x")
    town.um.write_file(unit.relative_to(town.um.home), elsewhere)
    assert f"wrote {unit}" in town.gtd_cmd("units", "install")
    assert f"ReadWritePaths=-{town.root}" in unit.read_text().splitlines()
