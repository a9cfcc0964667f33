from __future__ import annotations

import pathlib
import re
import sys
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
from gtd.tmux import Tmux
from tests.conftest import TmuxServer

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
    IdentityCase(
        test_id="dashed_rig_witness",
        dash="my-rig-witness",
        slash="my-rig/witness",
        expected=Identity(Kind.WITNESS, "my-rig"),
        session="gt-my-rig-witness",
        gt_rig="my-rig",
        gt_refinery=None,
        workdir=TOWN / "my-rig",
        state_file=TOWN / "my-rig/witness/state.json",
        presync=False,
    ),
    IdentityCase(
        test_id="dashed_rig_refinery",
        dash="my-rig-refinery",
        slash="my-rig/refinery",
        expected=Identity(Kind.REFINERY, "my-rig"),
        session="gt-my-rig-refinery",
        gt_rig="my-rig",
        gt_refinery="1",
        workdir=TOWN / "my-rig/refinery/rig",
        state_file=TOWN / "my-rig/refinery/state.json",
        presync=True,
    ),
    IdentityCase(
        test_id="dashed_rig_crew",
        dash="my-rig-crew-max",
        slash="my-rig/crew/max",
        expected=Identity(Kind.CREW, "my-rig", "max"),
        session="gt-my-rig-crew-max",
        gt_rig="my-rig",
        gt_refinery=None,
        workdir=TOWN / "my-rig/crew/max",
        state_file=TOWN / "my-rig/crew/max/state.json",
        presync=True,
    ),
    IdentityCase(
        test_id="dashed_crew_name",
        dash="my-rig-crew-max-2",
        slash="my-rig/crew/max-2",
        expected=Identity(Kind.CREW, "my-rig", "max-2"),
        session="gt-my-rig-crew-max-2",
        gt_rig="my-rig",
        gt_refinery=None,
        workdir=TOWN / "my-rig/crew/max-2",
        state_file=TOWN / "my-rig/crew/max-2/state.json",
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


class ReadingCase(t.NamedTuple):
    """A dash form whose reading depends on upstream's order of checks."""

    test_id: str
    text: str
    expected: Identity


READING_CASES = [
    ReadingCase("witness_suffix_before_crew", "gastown-crew-witness",
                Identity(Kind.WITNESS, "gastown-crew")),
    ReadingCase("refinery_suffix_before_crew", "gastown-crew-max-refinery",
                Identity(Kind.REFINERY, "gastown-crew-max")),
    ReadingCase("first_crew_wins", "a-crew-b-crew-c", Identity(Kind.CREW, "a", "b-crew-c")),
    ReadingCase("many_dashes", "my-rig-name-witness", Identity(Kind.WITNESS, "my-rig-name")),
    ReadingCase("rig_named_crew", "crew-crew-max", Identity(Kind.CREW, "crew", "max")),
    ReadingCase("rig_named_witness", "witness-witness", Identity(Kind.WITNESS, "witness")),
    ReadingCase("crew_named_crew", "gastown-crew-crew", Identity(Kind.CREW, "gastown", "crew")),
    ReadingCase("reserved_word_inside_rig", "my-mayor-witness", Identity(Kind.WITNESS, "my-mayor")),
]  # fmt: skip


@pytest.mark.parametrize("case", READING_CASES, ids=[c.test_id for c in READING_CASES])
def test_dash_form_read_as_upstream(case: ReadingCase) -> None:
    """A -witness/-refinery suffix is read first, else the first -crew-, as lifecycle.go does."""
    identity = parse_identity(case.text)
    assert case.expected == identity
    assert case.text == identity.dash
    assert identity == parse_identity(identity.slash)


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
    RejectCase("bare_role", "witness", "unknown shape"),
    RejectCase("only_dashes", "--", "unknown shape"),
    RejectCase("empty_rig_crew", "-crew-max", "empty rig name"),
    RejectCase("leading_dash_rig", "-gastown-witness", "invalid rig name '-gastown'"),
    RejectCase("trailing_dash_rig", "gastown--witness", "invalid rig name 'gastown-'"),
    RejectCase("leading_dash_crew", "gastown-crew--max", "invalid crew name '-max'"),
    RejectCase("trailing_dash_crew", "gastown-crew-max-", "invalid crew name 'max-'"),
    RejectCase("uppercase_suffix", "gastown-Witness", "unknown shape"),
    RejectCase(
        "crew_named_witness", "gastown/crew/witness", "reads as the witness of rig 'gastown-crew'"
    ),
    RejectCase(
        "crew_name_ends_refinery",
        "gastown/crew/max-refinery",
        "reads as the refinery of rig 'gastown-crew-max'",
    ),
    RejectCase("crew_rig_with_crew", "a-crew-b/crew/c", "reads as crew 'b-crew-c' of rig 'a'"),
    RejectCase("crew_rig_ends_crew", "x-crew/crew/y", "reads as crew 'crew-y' of rig 'x'"),
    RejectCase("long_crew", "gastown-crew-" + "m" * 65, "invalid crew name"),
    RejectCase("dash_slash_mix", "my-rig/crew-max", "unknown shape"),
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
    ConstructCase("slash_in_rig", Kind.WITNESS, "a/b", None),
    ConstructCase("leading_dash_rig", Kind.REFINERY, "-rig", None),
    ConstructCase("crew_named_witness", Kind.CREW, "gastown", "witness"),
    ConstructCase("crew_named_refinery", Kind.CREW, "gastown", "refinery"),
    ConstructCase("crew_name_ends_witness", Kind.CREW, "gastown", "max-witness"),
    ConstructCase("crew_rig_contains_crew", Kind.CREW, "a-crew-b", "c"),
    ConstructCase("crew_rig_ends_crew", Kind.CREW, "x-crew", "y"),
    ConstructCase("long_rig", Kind.WITNESS, "r" * 65, None),
]


@pytest.mark.parametrize("case", CONSTRUCT_CASES, ids=[c.test_id for c in CONSTRUCT_CASES])
def test_identity_constructor_validates(case: ConstructCase) -> None:
    """Building an Identity directly is as strict as parsing one."""
    with pytest.raises(IdentityError):
        Identity(case.kind, case.rig, case.name)


@pytest.mark.parametrize(
    "session",
    [
        "gastown-witness",
        "gt-",
        "gt-gastown/witness",
        "gt-mayor/",
        "gt-x;y",
        "GT-mayor",
        "gtmayor",
        "gt-gastown-crew-",
        "gt--witness",
        "gt-gastown-polecat",
        "gt-my-rig",
    ],
)
def test_identity_from_session_ignores_others(session: str) -> None:
    """Sessions that are not canonical gt agent sessions map to None."""
    assert identity_from_session(session) is None


# Rig and crew names as SPEC has them: letters, digits, '_' and '-', no dash at either end.
NAME_RULE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?")
# The words upstream's reading turns on, so generated names hit its edges often.
WORDS = ["crew", "witness", "refinery", "mayor", "my", "rig", "x1", "_", "Z"]
plain_names = st.from_regex(NAME_RULE, fullmatch=True)
dashed_names = st.lists(
    st.sampled_from(WORDS) | st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True),
    min_size=1,
    max_size=5,
).map("-".join)
names = plain_names | dashed_names


def valid_name(part: str | None) -> bool:
    return part is not None and NAME_RULE.fullmatch(part) is not None


def valid_rig(part: str | None) -> bool:
    return valid_name(part) and str(part).lower() not in {"mayor", "deacon", "daemon"}


# -- upstream's functions (lifecycle.go), transliterated as the oracle ---------------------


def go_identity_to_session(identity: str) -> str:
    """``identityToSession``: note that upstream has no case for the deacon."""
    if identity == "mayor":
        return "gt-mayor"
    if identity.endswith(("-witness", "-refinery")) or "-crew-" in identity:
        return "gt-" + identity
    return ""


def go_identity_to_bd_actor(identity: str) -> str:
    """``identityToBDActor``."""
    if identity in ("mayor", "deacon"):
        return identity
    for role in ("witness", "refinery"):
        if identity.endswith("-" + role):
            return identity.removesuffix("-" + role) + "/" + role
    if "-crew-" in identity:
        rig, name = identity.split("-crew-", 1)
        return f"{rig}/crew/{name}"
    return identity


def go_identity_to_state_file(town: pathlib.Path, identity: str) -> pathlib.Path | None:
    """``identityToStateFile`` (``None`` for upstream's ``""``)."""
    if identity == "mayor":
        return town / "mayor" / "state.json"
    for role in ("witness", "refinery"):
        if identity.endswith("-" + role):
            return town / identity.removesuffix("-" + role) / role / "state.json"
    if "-crew-" in identity:
        rig, name = identity.split("-crew-", 1)
        return town / rig / "crew" / name / "state.json"
    return None


def go_restart_workdir(town: pathlib.Path, identity: str) -> pathlib.Path | None:
    """The working directory ``restartSession`` picks (``None``: "don't know how")."""
    if identity == "mayor":
        return town
    if identity.endswith("-witness"):
        return town / identity.removesuffix("-witness")
    if identity.endswith("-refinery"):
        return town / identity.removesuffix("-refinery") / "refinery" / "rig"
    if "-crew-" in identity:
        rig, name = identity.split("-crew-", 1)
        return town / rig / "crew" / name
    return None


def go_parts(identity: str) -> tuple[str, str | None] | None:
    """The rig and crew name upstream takes out of a rig identity's dash form."""
    for role in ("witness", "refinery"):
        if identity.endswith("-" + role):
            return identity.removesuffix("-" + role), None
    if "-crew-" in identity:
        rig, name = identity.split("-crew-", 1)
        return rig, name
    return None


dash_texts = st.lists(
    st.sampled_from([*WORDS, "-", "-crew-", "-witness", "-refinery", "crew-", "gastown"]),
    min_size=1,
    max_size=7,
).map("".join)


@given(dash_texts)
def test_dash_forms_read_exactly_as_upstream(text: str) -> None:
    """A dash form is accepted iff upstream reads it into valid names, and then means the same.

    Session, BD_ACTOR, state file and workdir agree with ``identityToSession``,
    ``identityToBDActor``, ``identityToStateFile`` and ``restartSession``.
    """
    parts = go_parts(text)
    upstream_valid = text == "mayor" or (
        parts is not None
        and valid_rig(parts[0])
        and (parts[1] is None or valid_name(parts[1]))
        and len(text) <= 200
    )
    try:
        identity = parse_identity(text)
    except IdentityError:
        assert not upstream_valid
        return
    assert text == "deacon" or upstream_valid
    assert text == identity.dash
    assert go_identity_to_bd_actor(text) == identity.bd_actor
    if identity != DEACON:  # upstream has no session or state file for the deacon
        assert go_identity_to_session(text) == identity.session
        assert go_identity_to_state_file(TOWN, text) == identity.state_file(TOWN)
        assert go_restart_workdir(TOWN, text) == identity.workdir(TOWN)


@given(st.sampled_from([Kind.WITNESS, Kind.REFINERY, Kind.CREW]), names, names)
def test_identity_exists_only_when_its_dash_form_reads_back(
    kind: Kind, rig: str, name: str
) -> None:
    """An Identity is built exactly when its parts are valid and upstream reads its dash form back.

    Every one built round-trips through its dash form, slash form and session name;
    the slash form of one that cannot be built is refused too.
    """
    crew = name if kind is Kind.CREW else None
    dash = f"{rig}-crew-{name}" if kind is Kind.CREW else f"{rig}-{kind.value}"
    reads_back = go_parts(dash) == (rig, crew)
    try:
        identity = Identity(kind, rig, crew)
    except IdentityError:
        assert not (valid_rig(rig) and (crew is None or valid_name(crew)) and reads_back)
        with pytest.raises(IdentityError):
            parse_identity(f"{rig}/crew/{name}" if crew else f"{rig}/{kind.value}")
        return
    assert reads_back
    assert dash == identity.dash
    assert identity == parse_identity(identity.dash)
    assert identity == parse_identity(identity.slash)
    assert identity == identity_from_session(identity.session)


@given(st.sampled_from([MAYOR, DEACON]))
def test_town_identities_round_trip(identity: Identity) -> None:
    """The mayor and the deacon round-trip too."""
    assert identity == parse_identity(identity.dash) == parse_identity(identity.slash + "/")
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
        st.sampled_from(
            ["..", ".", "", "/", "-", "crew", "witness", "refinery", "gastown", "a b", "-crew-"]
        ),
        max_size=6,
    ).map("".join)
)
def test_near_miss_text_is_safe(town: pathlib.Path, text: str) -> None:
    """Text built from the grammar's own pieces is parsed safely too."""
    _check_parsed(text, town)


TMUX_EDGE_CASES = [
    "mayor",
    "my-rig-witness",
    "my-rig-crew-max",
    "my-rig-crew-max-2",  # my-rig-crew-max is a prefix of it: tmux must not mix them up
    "a-crew-b-crew-c",
    "gastown-crew-witness",
    "0-refinery",
    "a_-crew-0_",
    "r" * 64 + "-crew-" + "n" * 64,
]


@pytest.mark.integration
def test_sessions_are_exact_tmux_targets(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Every session name is created, listed, targeted and killed by tmux exactly as written.

    Dashed names whose session names are prefixes of each other stay apart.
    """
    tmux = Tmux(tmux_server.socket)
    idents = [parse_identity(text) for text in TMUX_EDGE_CASES]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    for identity in idents:
        tmux.new_session(
            identity.session, cwd=str(tmp_path), env={}, argv=sleeper, tag=identity.dash
        )
    listed = {pane.session_name: pane.agent for pane in tmux.list_panes()}
    assert {i.session: i.dash for i in idents} == listed
    assert idents == [identity_from_session(i.session) for i in idents]
    for identity in idents:
        shown = tmux_server.cmd("display-message", "-p", "-t", f"={identity.session}:", "#S")
        assert identity.session == shown.stdout.strip()
    tmux.kill_session(parse_identity("my-rig-crew-max").session)
    left = {pane.session_name for pane in tmux.list_panes()}
    assert {i.session for i in idents} - {"gt-my-rig-crew-max"} == left
