"""The sdist and wheel for PyPI, and the Arch and RPM recipes built from that sdist.

The wheel and sdist are built for real (``python -m build``, about 15 s). Arch's and
Fedora's build tools cannot run their Python steps here, so their recipes are parsed
with the real parsers where Debian has them (``makepkg --printsrcinfo``, ``rpmspec
-P``) and their file lists are checked against what the sdist holds and the wheel
installs: a misspelt source, a file installed but not packaged, or packaged but never
installed, fails.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import typing as t
import zipfile

import pytest

from gtd import __version__

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIST = PYPROJECT["project"]["name"]
STEM = re.sub(r"[-_.]+", "_", DIST)
UNITS = sorted(p.name for p in (REPO / "units").glob("*.service"))
CATALOG = "usr/lib/systemd/catalog/gtd.catalog"
#: What every distribution package must hold besides the Python package itself.
PACKAGED = {
    "usr/bin/gtd",
    *(f"usr/lib/systemd/user/{u}" for u in UNITS),
    CATALOG,
    "usr/share/man/man1/gtd.1",
    "usr/share/bash-completion/completions/gtd",
}


#: Each runtime dependency's package: Debian, Arch. A dependency gtd drops must go from
#: debian/control and the PKGBUILD too (Fedora generates them from the metadata).
DISTRO_NAMES = {
    "systemd-python": ("python3-systemd", "python-systemd"),
    "sdnotify": ("python3-sdnotify", "python-sdnotify"),
    "tomli-w": ("python3-tomli-w", "python-tomli-w"),
    "libtmux": ("python3-libtmux", "python-libtmux"),
}


def requirement_name(requirement: str) -> str:
    """The project name of a PEP 508 requirement, lower case."""
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower()


class Dists(t.NamedTuple):
    sdist: pathlib.Path
    wheel: pathlib.Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Build the sdist, then the wheel from it, as a PyPI upload would be built."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == proc.returncode, proc.stdout + proc.stderr
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return Dists(sdist, wheel)


def test_distribution_name_is_not_gtd() -> None:
    """PyPI's `gtd` is an unrelated project: ours is published as gastown-daemon."""
    assert "gastown-daemon" == DIST
    assert "gtd = gtd.cli:main" == f"gtd = {PYPROJECT['project']['scripts']['gtd']}"


def test_wheel_has_entry_point_units_and_data(dists: Dists) -> None:
    """The wheel: the gtd command, the units it installs, man page, completion, catalog."""
    assert f"{STEM}-{__version__}-py3-none-any.whl" == dists.wheel.name
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        info = f"{STEM}-{__version__}.dist-info"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(whl.read(f"{info}/entry_points.txt").decode())
        assert "gtd.cli:main" == entry_points["console_scripts"]["gtd"]
        metadata = whl.read(f"{info}/METADATA").decode()
        licenses = [n for n in names if n.startswith(f"{info}/") and n.endswith("/LICENSE")]
        assert [(REPO / "LICENSE").read_bytes()] == [whl.read(n) for n in licenses], licenses
        data = f"{STEM}-{__version__}.data/data/share"
        for inside, source in (
            ("man/man1/gtd.1", "gtd.1"),
            ("bash-completion/completions/gtd", "gtd.bash-completion"),
            ("gtd/gtd.catalog", "gtd.catalog"),
        ):
            assert (PACKAGING / source).read_bytes() == whl.read(f"{data}/{inside}")
    assert f"Name: {DIST}" in metadata.splitlines()
    runtime = [
        ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:") and "extra" not in ln
    ]
    assert sorted(map(requirement_name, PYPROJECT["project"]["dependencies"])) == sorted(
        requirement_name(ln.removeprefix("Requires-Dist: ")) for ln in runtime
    )
    assert {f"gtd/{p.name}" for p in (REPO / "gtd").glob("*.py")} <= names
    # The units `gtd units install` writes come from the wheel's own gtd.systemd.
    render = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); from gtd import systemd; "
        "print(json.dumps(systemd.render_units('/usr/bin/gtd')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", render, str(dists.wheel)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    import json

    rendered = json.loads(out)
    assert UNITS == sorted(rendered)
    for name, text in rendered.items():
        assert (REPO / "units" / name).read_text() == text


def sdist_files(dists: Dists) -> set[str]:
    with tarfile.open(dists.sdist) as tar:
        prefix = f"{STEM}-{__version__}/"
        return {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}


def wheel_installs(dists: Dists) -> set[str]:
    """What installing the wheel under /usr gives, besides the Python package."""
    out = {"usr/bin/gtd"}  # from the console_scripts entry point
    data = f"{STEM}-{__version__}.data/data/"
    with zipfile.ZipFile(dists.wheel) as whl:
        out |= {"usr/" + n.removeprefix(data) for n in whl.namelist() if n.startswith(data)}
    return out


class Recipe(t.NamedTuple):
    """What a recipe installs by hand (dest -> source), removes, and packages."""

    installs: dict[str, str]
    removes: set[str]
    packaged: set[str]


def check_recipe(recipe: Recipe, dists: Dists, extra: t.AbstractSet[str] = frozenset()) -> None:
    """The recipe's own steps plus the wheel give exactly PACKAGED (and *extra*), from the sdist."""
    assert set(recipe.installs.values()) <= sdist_files(dists)
    from_wheel = wheel_installs(dists)
    for removed in recipe.removes:
        assert any(f.startswith(removed + "/") for f in from_wheel), removed
    kept = {f for f in from_wheel if not any(f.startswith(r + "/") for r in recipe.removes)}
    assert PACKAGED | extra == kept | set(recipe.installs)
    assert PACKAGED | extra == recipe.packaged


def install_lines(text: str, root: str) -> Recipe:
    """Parse ``install -D... SRC DEST`` and ``rm -r DIR`` lines below *root* (pkgdir/buildroot)."""
    installs, removes = {}, set()
    for line in text.splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith(("install ", "rm ")) else []
        if words[:1] == ["install"]:
            src, dest = words[-2], words[-1]
            assert dest.startswith(root + "/"), line
            installs[dest.removeprefix(root + "/")] = src
        elif words[:2] == ["rm", "-r"]:
            assert words[2].startswith(root + "/"), line
            removes.add(words[2].removeprefix(root + "/"))
    return Recipe(installs, removes, set())


# --- Arch ---------------------------------------------------------------------------


def run_as_nobody(argv: list[str], cwd: pathlib.Path) -> str:
    """Run *argv* in *cwd*; as root, as nobody (makepkg refuses root), *cwd* opened up."""
    if os.geteuid() == 0:
        for p in [cwd, *cwd.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        cwd.chmod(0o777)
        argv = ["runuser", "-u", "nobody", "--", "env", f"HOME={cwd}", *argv]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_pkgbuild_is_valid_bash() -> None:
    """`bash -n` accepts the PKGBUILD."""
    subprocess.run(["bash", "-n", str(PACKAGING / "arch" / "PKGBUILD")], check=True)


@pytest.mark.skipif(
    shutil.which("makepkg") is None or shutil.which("pacman") is None,
    reason="needs makepkg and pacman (Debian: makepkg, pacman-package-manager)",
)
def test_pkgbuild_srcinfo_matches_the_project(dists: Dists) -> None:
    """`makepkg --printsrcinfo` reads it: version, PyPI's sdist, Arch's Python and systemd deps."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="gtd-pkgbuild-"))  # not under /tmp/pytest-of-root
    try:
        shutil.copy(PACKAGING / "arch" / "PKGBUILD", work / "PKGBUILD")
        srcinfo = run_as_nobody(["makepkg", "--printsrcinfo"], work)
    finally:
        shutil.rmtree(work)
    fields: dict[str, list[str]] = {}
    for line in srcinfo.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep:
            fields.setdefault(key, []).append(value)
    assert [__version__] == fields["pkgver"]
    assert ["gtd"] == fields["pkgname"]
    [source] = fields["source"]
    assert source.endswith("/" + dists.sdist.name)
    assert f"/packages/source/{STEM[0]}/{STEM}/" in source
    runtime = {DISTRO_NAMES[requirement_name(r)][1] for r in PYPROJECT["project"]["dependencies"]}
    python_deps = {d for d in fields["depends"] if d.startswith("python-")}
    assert (runtime, {"python", "tmux", "systemd"}) == (
        python_deps,
        set(fields["depends"]) - python_deps,
    )
    assert {"python-build", "python-installer", "python-hatchling"} <= set(fields["makedepends"])


def test_pkgbuild_packages_what_the_build_installs(dists: Dists) -> None:
    """package(): the wheel through python-installer, then units and catalog from the sdist."""
    text = (PACKAGING / "arch" / "PKGBUILD").read_text()
    body = text.split("package() {", 1)[1].split("\n}", 1)[0]
    assert 'python -m installer --destdir="$pkgdir" dist/*.whl' in body
    assert "python -m build --wheel --no-isolation" in text
    recipe = install_lines(body.replace('"$pkgdir', '"PKGDIR'), "PKGDIR")
    license_file = "usr/share/licenses/gtd/LICENSE"  # Arch wants MIT's text there
    check_recipe(recipe._replace(packaged=PACKAGED | {license_file}), dists, {license_file})


# --- RPM ----------------------------------------------------------------------------

#: Fedora's values for the macros Debian's rpm does not define (python-rpm-macros,
#: systemd-rpm-macros); the pyproject ones only need to exist for -P to expand.
FEDORA_MACROS = {
    "_journalcatalogdir": "/usr/lib/systemd/catalog",
    "_userunitdir": "/usr/lib/systemd/user",
    "pypi_source()": "https://files.pythonhosted.org/packages/source/%(echo %1 | cut -c1)/%1/"
    "%1-%{version}.tar.gz",
    "pyproject_files": "%{_builddir}/pyproject-files",
    "buildroot": "/BUILDROOT",
}


def rpmspec() -> str:
    argv = ["rpmspec", "-P", str(PACKAGING / "rpm" / "gtd.spec")]
    for name, value in FEDORA_MACROS.items():
        argv += ["--define", f"{name} {value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert 0 == proc.returncode, proc.stderr
    return proc.stdout


def sections(spec: str) -> dict[str, str]:
    """The spec's sections (``%install``, ``%files``, ``%post`` ...) by name, preamble as ''."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    names = "prep|build|install|check|files|post|preun|postun|changelog|description"
    names += "|generate_buildrequires"
    for line in spec.splitlines():
        match = re.match(rf"%({names})\b", line)
        current = match.group(1) if match else current
        out.setdefault(current, []).append(line)
    return {k: "\n".join(v) for k, v in out.items()}


@pytest.mark.skipif(shutil.which("rpmspec") is None, reason="needs rpmspec (Debian: rpm)")
def test_rpm_spec_packages_what_the_build_installs(dists: Dists) -> None:
    """`rpmspec -P` parses it; %install plus the wheel give exactly what %files lists."""
    spec = sections(rpmspec())
    preamble = {
        k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in spec[""].splitlines()) if v
    }
    assert (__version__, "gtd", "noarch") == (
        preamble["Version"],
        preamble["Name"],
        preamble["BuildArch"],
    )
    assert preamble["Source"].endswith("/" + dists.sdist.name)
    assert "%license LICENSE" in spec["files"].splitlines()
    for macro in ("%pyproject_wheel", "%pyproject_install", "%pyproject_save_files gtd"):
        assert macro in spec["build"] + spec["install"], macro
    recipe = install_lines(spec["install"], "/BUILDROOT")
    packaged = set()
    for line in spec["files"].splitlines()[1:]:
        if line.startswith("/"):
            packaged.add(line.lstrip("/").removesuffix("*"))
    check_recipe(recipe._replace(packaged=packaged), dists)


@pytest.mark.skipif(shutil.which("rpmspec") is None, reason="needs rpmspec (Debian: rpm)")
def test_rpm_scriptlets_use_the_user_unit_macros() -> None:
    """%post/%preun/%postun name both units; only the daemon is restarted after an upgrade."""
    spec = sections(rpmspec())
    both = " ".join(UNITS)
    assert f"%systemd_user_post {both}" in spec["post"]
    assert f"%systemd_user_preun {both}" in spec["preun"]
    assert "%systemd_user_postun_with_restart gastown-daemon.service\n" in spec["postun"] + "\n"
    assert "%systemd_user_postun gastown-tmux.service" in spec["postun"]


def test_debian_depends_on_the_runtime_dependencies() -> None:
    """debian/control depends on Debian's package for each runtime dependency, and no other."""
    control = (PACKAGING / "debian" / "control").read_text()
    binary = control.split("\nPackage: gtd\n", 1)[1]
    depends = binary.split("Depends:", 1)[1].split("\nDescription:", 1)[0]
    names = {d.strip().split()[0] for d in depends.replace("\n", " ").split(",") if d.strip()}
    runtime = {DISTRO_NAMES[requirement_name(r)][0] for r in PYPROJECT["project"]["dependencies"]}
    assert runtime == {n for n in names if n.startswith("python3-")}
    assert {"tmux", "systemd"} <= names
