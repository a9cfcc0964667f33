from __future__ import annotations

import pathlib
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtd.exc import IdentityError
from gtd.identities import (
    DEACON,
    MAYOR,
    Identity,
    Kind,
    identity_from_session,
    parse_identity,
)

TOWN = pathlib.Path("/home/u/gt")
METACHARACTERS = set(";$()`|&<>*?'\"\\ :#{}%\t\n\r\0./~!")


class IdentityCase(t.NamedTuple):
    """One row of SPEC's identity table."""

    test_id: str
    dash: str
    slash: str
    expected: Identity
    session: str
    gt_rig: str | None
    gt_refinery: str | None
    workdir: pathlib.Path
    state_file: pathlib.Path
    presync: bool


IDENTITY_CASES = [
    IdentityCase(
        test_id="mayor",
        dash="mayor",
        slash="mayor",
        expected=Identity(Kind.MAYOR),
        session="gt-mayor",
        gt_rig=None,
        gt_refinery=None,
        workdir=TOWN,
        state_file=TOWN / "mayor/state.json",
        presync=False,
    ),
    IdentityCase(
        test_id="deacon",
        dash="deacon",
        slash="deacon",
        expected=Identity(Kind.DEACON),
        session="gt-deacon",
        gt_rig=None,
        gt_refinery=None,
        workdir=TOWN / "deacon",
        state_file=TOWN / "deacon/state.json",
        presync=False,
    ),
    IdentityCase(
        test_id="witness",
        dash="gastown-witness",
        slash="gastown/witness",
        expected=Identity(Kind.WITNESS, "gastown"),
        session="gt-gastown-witness",
        gt_rig="gastown",
        gt_refinery=None,
        workdir=TOWN / "gastown",
        state_file=TOWN / "gastown/witness/state.json",
        presync=False,
    ),
    IdentityCase(
        test_id="refinery",
        dash="gastown-refinery",
        slash="gastown/refinery",
        expected=Identity(Kind.REFINERY, "gastown"),
        session="gt-gastown-refinery",
        gt_rig="gastown",
        gt_refinery="1",
        workdir=TOWN / "gastown/refinery/rig",
        state_file=TOWN / "gastown/refinery/state.json",
        presync=True,
    ),
    IdentityCase(
        test_id="crew",
        dash="gastown-crew-max",
        slash="gastown/crew/max",
        expected=Identity(Kind.CREW, "gastown", "max"),
        session="gt-gastown-crew-max",
        gt_rig="gastown",
        gt_refinery=None,
        workdir=TOWN / "gastown/crew/max",
        state_file=TOWN / "gastown/crew/max/state.json",
        presync=True,
    ),
]


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=[c.test_id for c in IDENTITY_CASES])
@pytest.mark.parametrize("form", ["dash", "slash"])
def test_identity_table(case: IdentityCase, form: str) -> None:
    """Both forms of every kind give SPEC's session, environment and paths."""
    identity = parse_identity(case.dash if form == "dash" else case.slash)
    assert case.expected == identity
    assert case.dash == identity.dash == identity.gt_role == str(identity)
    assert case.slash == identity.slash == identity.bd_actor
    assert case.session == identity.session
    expected_env = {"GT_ROLE": case.dash, "BD_ACTOR": case.slash}
    if case.gt_rig is not None:
        expected_env["GT_RIG"] = case.gt_rig
    if case.gt_refinery is not None:
        expected_env["GT_REFINERY"] = case.gt_refinery
    assert expected_env == identity.env()
    assert case.workdir == identity.workdir(TOWN)
    assert case.state_file == identity.state_file(TOWN)
    assert case.presync == identity.presync
    assert identity == identity_from_session(case.session)


@pytest.mark.parametrize(("text", "expected"), [("mayor/", MAYOR), ("deacon/", DEACON)])
def test_mail_identity_trailing_slash(text: str, expected: Identity) -> None:
    """Upstream's mail identities ``mayor/`` and ``deacon/`` are accepted."""
    assert expected == parse_identity(text)


class RejectCase(t.NamedTuple):
    """Text that must not parse, and what the error must say."""

    test_id: str
    text: str
    problem: str


REJECT_CASES = [
    RejectCase("dotdot", "../x", "'..' is not allowed"),
    RejectCase("semicolon", "a;rm -rf ~", "shell/tmux metacharacter ';'"),
    RejectCase("command_substitution", "$(id)", "shell/tmux metacharacter '$'"),
    RejectCase("dotdot_inside", "gastown/../x", "'..' is not allowed"),
    RejectCase("empty_crew", "gastown-crew-", "empty crew name"),
    RejectCase("empty_rig", "-witness", "empty rig name"),
    RejectCase("three_slashes", "x/y/z", "unknown shape"),
    RejectCase("too_long", "a" * 201, "longer than 200 characters"),
    RejectCase("long_rig", "a" * 65 + "-witness", "invalid rig name"),
    RejectCase("non_ascii", "gästown-witness", "non-ASCII character 'ä'"),
    RejectCase("reserved_rig", "mayor-witness", "'mayor' is reserved"),
    RejectCase("reserved_rig_slash", "daemon/refinery", "'daemon' is reserved"),
    RejectCase("reserved_rig_case", "Deacon-witness", "'Deacon' is reserved"),
    RejectCase("crew_trailing_slash", "gastown/crew/max/", "empty part"),
    RejectCase("empty", "", "empty identity"),
    RejectCase("space", "gastown witness", "whitespace ' '"),
    RejectCase("newline", "gastown-witness\n", "whitespace '\\n'"),
    RejectCase("nul", "deacon\0", "NUL character"),
    RejectCase("tmux_target", "gt:0.1", "metacharacter ':'"),
    RejectCase("tmux_format", "#{pane_pid}-witness", "metacharacter '#'"),
    RejectCase("dot", "a.b-witness", "character '.' is not allowed"),
    RejectCase("tilde", "~-witness", "character '~' is not allowed"),
    RejectCase("unknown_role", "gastown-polecat", "unknown shape"),
    RejectCase("unknown_slash_role", "gastown/polecat", "unknown shape"),
    RejectCase("dash_in_crew", "gastown-crew-max-2", "unknown shape"),
    RejectCase("mixed_forms", "gastown/crew-max", "unknown shape"),
    RejectCase("leading_slash", "/gastown/witness", "empty part"),
    RejectCase("double_slash", "mayor//", "empty part"),
    RejectCase("uppercase_role", "Mayor", "unknown shape"),
    RejectCase("underscore_first", "_x-witness", "invalid rig name"),
]


@pytest.mark.parametrize("case", REJECT_CASES, ids=[c.test_id for c in REJECT_CASES])
def test_parse_identity_rejects(case: RejectCase) -> None:
    """Everything outside SPEC's shapes raises IdentityError saying why."""
    with pytest.raises(IdentityError) as info:
        parse_identity(case.text)
    assert case.problem in info.value.problem
    assert case.text == info.value.identity


def test_parse_identity_rejects_non_str() -> None:
    """A non-string (say, a JSON number in a request) is an IdentityError, not a crash."""
    with pytest.raises(IdentityError, match="expected a string, got int"):
        parse_identity(t.cast(str, 42))


class ConstructCase(t.NamedTuple):
    """Identity parts that the constructor must refuse."""

    test_id: str
    kind: Kind
    rig: str | None
    name: str | None


CONSTRUCT_CASES = [
    ConstructCase("mayor_with_rig", Kind.MAYOR, "gastown", None),
    ConstructCase("witness_without_rig", Kind.WITNESS, None, None),
    ConstructCase("witness_with_name", Kind.WITNESS, "gastown", "max"),
    ConstructCase("crew_without_name", Kind.CREW, "gastown", None),
    ConstructCase("path_in_rig", Kind.WITNESS, "../etc", None),
    ConstructCase("path_in_name", Kind.CREW, "gastown", "../../x"),
]


@pytest.mark.parametrize("case", CONSTRUCT_CASES, ids=[c.test_id for c in CONSTRUCT_CASES])
def test_identity_constructor_validates(case: ConstructCase) -> None:
    """Building an Identity directly is as strict as parsing one."""
    with pytest.raises(IdentityError):
        Identity(case.kind, case.rig, case.name)


@pytest.mark.parametrize(
    "session",
    ["gastown-witness", "gt-", "gt-gastown/witness", "gt-mayor/", "gt-x;y", "GT-mayor", "gtmayor"],
)
def test_identity_from_session_ignores_others(session: str) -> None:
    """Sessions that are not canonical gt agent sessions map to None."""
    assert identity_from_session(session) is None


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}", fullmatch=True)
rigs = names.filter(lambda n: n.lower() not in {"mayor", "deacon", "daemon"})
identities = st.one_of(
    st.just(MAYOR),
    st.just(DEACON),
    st.builds(Identity, st.just(Kind.WITNESS), rigs),
    st.builds(Identity, st.just(Kind.REFINERY), rigs),
    st.builds(Identity, st.just(Kind.CREW), rigs, names),
)


@given(identities)
def test_round_trips(identity: Identity) -> None:
    """Dash form, slash form and session name all parse back to the identity."""
    assert identity == parse_identity(identity.dash)
    assert identity == parse_identity(identity.slash)
    assert identity == identity_from_session(identity.session)


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("town").resolve()


def _check_parsed(text: str, town: pathlib.Path) -> None:
    try:
        identity = parse_identity(text)
    except IdentityError:
        return
    assert identity.workdir(town).resolve().is_relative_to(town)
    assert identity.state_file(town).resolve().is_relative_to(town)
    assert identity.state_file(town).resolve() != town
    assert not METACHARACTERS & set(identity.session)
    assert not METACHARACTERS & set(identity.dash)
    assert identity.session.isascii()


@given(st.text(max_size=300))
def test_arbitrary_text_is_safe(town: pathlib.Path, text: str) -> None:
    """Any text either raises IdentityError or gives paths inside the town."""
    _check_parsed(text, town)


@given(
    st.lists(
        st.sampled_from(["..", ".", "", "/", "-", "crew", "witness", "refinery", "gastown", "a b"]),
        max_size=6,
    ).map("".join)
)
def test_near_miss_text_is_safe(town: pathlib.Path, text: str) -> None:
    """Text built from the grammar's own pieces is parsed safely too."""
    _check_parsed(text, town)
