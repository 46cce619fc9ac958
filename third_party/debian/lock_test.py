"""The committed packages.lock.json was made from the committed packages.in, and pins every package fully."""

import json
import re
from pathlib import Path

import pytest

from third_party.debian.private import lock

WORKSPACE = Path.cwd()  # the runfiles root of this workspace
LOCK = json.loads((WORKSPACE / lock.LOCK_FILE).read_text())


def test_lock_is_fresh():
    expected = lock.inputs_digest((WORKSPACE / lock.INPUT_FILE).read_bytes())
    assert LOCK["inputs"] == expected, (
        f"{lock.LOCK_FILE} is stale: {lock.INPUT_FILE} changed since it was locked "
        f"(recorded {LOCK['inputs']}, inputs now {expected}).\nFix: {lock.COMMAND}")


def test_every_package_is_pinned_by_name_version_url_sha256_and_size():
    names = [p["name"] for p in LOCK["packages"]]
    assert names == sorted(names) and len(set(names)) == len(names), f"packages must be unique and sorted; {lock.COMMAND}"
    for pkg in LOCK["packages"]:
        assert pkg["architecture"] in ("amd64", "all"), pkg
        assert re.fullmatch(r"[0-9a-f]{64}", pkg["sha256"]), pkg
        assert isinstance(pkg["size"], int) and pkg["size"] > 0, pkg
        assert pkg["url"].startswith(("https://deb.debian.org/debian/pool/", "https://deb.debian.org/debian-security/pool/")), pkg
        assert pkg["url"].endswith(".deb"), pkg


def test_roots_are_locked_and_exclusions_are_not():
    roots, excluded = lock.read_inputs((WORKSPACE / lock.INPUT_FILE).read_text())
    names = {p["name"] for p in LOCK["packages"]}
    assert set(roots) <= names, f"roots missing from the lock: {sorted(set(roots) - names)}; {lock.COMMAND}"
    assert not names & set(excluded), f"excluded packages in the lock: {sorted(names & set(excluded))}"
    assert "python3.11" in names and "libc6" in names


def test_lock_is_written_deterministically():
    assert (WORKSPACE / lock.LOCK_FILE).read_text() == lock.dump_lock(LOCK)


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("1.0", "1.0", 0), ("1.0~rc1", "1.0", -1), ("1:0.1", "2.0", 1), ("1.2.13.dfsg-1", "1.2.13-1", 1),
    ("3.11.2-6+deb12u9", "3.11.2-6+deb12u8", 1), ("20250419~deb12u2", "20230311+deb12u1", 1),
    ("1.0-1", "1.0", 1), ("1.0a", "1.0", 1), ("1.0~", "1.0", -1), ("2.36-9+deb12u14", "2.36-9+deb12u4", 1),
])
def test_debian_version_order(a, b, sign):
    result = lock.compare_versions(a, b)
    assert (result > 0) - (result < 0) == sign


def _pkg(name, version="1", depends="", provides=""):
    return lock.Package(name, version, "amd64", f"pool/{name}.deb", "0" * 64, 1, "bookworm", "https://x",
                        lock.parse_relations(depends, name), [a[0] for a in lock.parse_relations(provides, name)])


def test_resolution_prefers_chosen_alternatives_and_skips_exclusions():
    universe = lock.Universe([
        _pkg("app", depends="libc6 (>= 2), dpkg | install-info, mawk | awk, debconf (>= 0.5) | debconf-2.0"),
        _pkg("libc6", "2.36"), _pkg("dpkg"), _pkg("install-info"), _pkg("mawk", provides="awk"),
        _pkg("debconf"),
    ])
    chosen, skipped = lock.resolve(universe, ["app"], {"dpkg": "x", "debconf": "y", "debconf-2.0": "z"})
    assert sorted(chosen) == ["app", "install-info", "libc6", "mawk"]
    assert skipped == {"debconf": ["app"], "debconf-2.0": ["app"]}


def test_resolution_names_ambiguous_virtual_packages_and_unsatisfiable_versions():
    universe = lock.Universe([_pkg("app", depends="awk"), _pkg("mawk", provides="awk"), _pkg("gawk", provides="awk")])
    with pytest.raises(lock.LockError, match="awk, which 2 packages provide: gawk, mawk"):
        lock.resolve(universe, ["app"], {})
    universe = lock.Universe([_pkg("app", depends="libc6 (>= 3)"), _pkg("libc6", "2.36")])
    with pytest.raises(lock.LockError, match=r"depends on libc6 \(>= 3\)"):
        lock.resolve(universe, ["app"], {})


def test_packages_in_syntax_errors_point_at_the_line():
    with pytest.raises(lock.LockError, match=r"packages.in:2: say why dpkg is excluded"):
        lock.read_inputs("python3.11\n-dpkg\n")
    with pytest.raises(lock.LockError, match=r"packages.in:1: 'Python3' is not a package name"):
        lock.read_inputs("Python3\n")
