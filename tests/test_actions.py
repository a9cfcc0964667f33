"""Agent state flags: the guard, clearing, and never through a link out of the town."""

from __future__ import annotations

import json
import pathlib

import pytest

from gtd import actions
from gtd.exc import RequestError
from gtd.identities import MAYOR, parse_identity
from gtd.request import Action

CYCLE, SHUTDOWN = Action.CYCLE, Action.SHUTDOWN


def test_flag_guard_and_clear_keep_other_keys(tmp_path: pathlib.Path) -> None:
    """set_request_flag → check_flag passes → clear_flag removes only the flag and its time."""
    town = tmp_path / "town"
    path = actions.set_request_flag(town, parse_identity("gastown/witness"), CYCLE)
    state = json.loads(path.read_text())
    path.write_text(json.dumps(state | {"mood": "ok"}))
    ident = parse_identity("gastown-witness")
    actions.check_flag(town, ident, CYCLE)
    assert actions.clear_flag(town, ident, CYCLE)
    assert {"mood": "ok"} == json.loads(path.read_text())
    with pytest.raises(RequestError, match="requesting_cycle is not true"):
        actions.check_flag(town, ident, CYCLE)
    assert not actions.clear_flag(town, ident, CYCLE)


def test_a_state_file_behind_a_link_out_of_the_town_is_not_touched(
    tmp_path: pathlib.Path,
) -> None:
    """<town>/mayor linked to a directory outside: refused for reading and writing alike."""
    town, outside = tmp_path / "town", tmp_path / "outside"
    town.mkdir()
    outside.mkdir()
    secret = outside / "state.json"
    secret.write_text('{"requesting_shutdown": true, "secret": 1}')
    (town / "mayor").symlink_to(outside)
    before = secret.read_bytes()
    for call in (
        lambda: actions.check_flag(town, MAYOR, SHUTDOWN),
        lambda: actions.clear_flag(town, MAYOR, SHUTDOWN),
        lambda: actions.set_request_flag(town, MAYOR, SHUTDOWN),
    ):
        with pytest.raises(RequestError, match="resolves outside the town"):
            call()
    assert before == secret.read_bytes()
