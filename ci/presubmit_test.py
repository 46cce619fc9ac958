"""Unit tests of presubmit: git changes (real git), config, .bazelrc/WORKSPACE scanning, reasons, lanes, JUnit."""

import json
import subprocess
from pathlib import Path

import pytest

from ci.private.changes import Change, changed_files, parse_name_status
from ci.private.lanes import plan
from ci.private.report import gather_junit
from ci.private.selection import Config, ConfigError, RuleInfo, Selection, _bazelrc_imports, _reasons_from_graph, _starlark_loads


def git(root, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_parse_name_status_handles_renames_copies_and_deletes():
    text = "M\0a.py\0R093\0old/x.py\0new/x.py\0D\0gone.txt\0C100\0src.py\0copy.py\0T\0link\0"
    assert parse_name_status(text) == [Change("M", "a.py"), Change("R", "new/x.py", "old/x.py"), Change("D", "gone.txt"),
                                       Change("A", "copy.py"), Change("M", "link")]
    assert Change("R", "n", "o").paths_before() == ["o"] and Change("R", "n", "o").paths_after() == ["n"]
    assert Change("D", "g").paths_after() == []


def test_changed_files_sees_commits_worktree_and_untracked(tmp_path):
    git(tmp_path, "init", "-q")
    for name in ("keep.txt", "edit.txt", "gone.txt", "move.txt"):
        (tmp_path / name).write_text(f"{name} with enough text for rename detection\n" * 5)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    base = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "edit.txt").write_text("edited\n")
    git(tmp_path, "commit", "-q", "-am", "edit")  # committed after base
    (tmp_path / "gone.txt").unlink()  # not committed
    git(tmp_path, "mv", "move.txt", "moved.txt")
    (tmp_path / "new.txt").write_text("untracked\n")
    (tmp_path / ".gitignore").write_text("ignored.txt\n")
    (tmp_path / "ignored.txt").write_text("x\n")
    assert changed_files(tmp_path, base) == [
        Change("A", ".gitignore"), Change("M", "edit.txt"), Change("D", "gone.txt"), Change("R", "moved.txt", "move.txt"),
        Change("A", "new.txt")]


def test_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "presubmit.json"
    path.write_text(json.dumps({"always_tests": []}))
    with pytest.raises(ConfigError, match="unknown key.*always_tests"):
        Config.load(path)


def test_the_committed_config_loads():
    config = Config.load(Path("ci/presubmit.json"))
    assert "//third_party/pip:lock_test" in config.always_test
    assert "third_party/pip/requirements_lock_cuda.txt" in config.repository_inputs["pypi"]


def test_bazelrc_imports_and_workspace_loads_are_followed(tmp_path):
    (tmp_path / ".bazelrc").write_text("build --x\nimport %workspace%/ci/bazelrc\ntry-import %workspace%/.bazelrc.user\n")
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci/bazelrc").write_text("try-import %workspace%/ci/more.rc\n")
    assert _bazelrc_imports(tmp_path, ".bazelrc") == ["ci/bazelrc", "ci/more.rc", ".bazelrc.user"]
    (tmp_path / "WORKSPACE").write_text('load("//a:r.bzl", "r")\nload("@other//:x.bzl", "x")\n')
    (tmp_path / "a").mkdir()
    (tmp_path / "a/r.bzl").write_text('load(":private.bzl", "p")\nload("//b:c.bzl", "c")\n')
    assert _starlark_loads(tmp_path, "WORKSPACE") == ["a/r.bzl", "a/private.bzl", "b/c.bzl"]


def test_reasons_follow_graph_edges_backwards():
    graph = '''digraph mygraph {
  "//b:b_test"
  "//b:b_test" -> "//a:lib"
  "//a:lib"
  "//a:lib" -> "@pypi//:numpy"
  "@pypi//:numpy"
  "//c:c_test"
}'''
    reasons = _reasons_from_graph(graph, {"@pypi//...": ["lock changed"], "//c:all": ["c/defs.bzl changed"]})
    assert reasons == {"@pypi//:numpy": "lock changed", "//a:lib": "lock changed", "//b:b_test": "lock changed",
                       "//c:c_test": "c/defs.bzl changed"}


def selection_of(*rules):
    return Selection(rules={r.label: r for r in rules})


def test_lanes_split_cpu_gpu_images_manual():
    selection = selection_of(
        RuleInfo("//a:lib", "py_library"),
        RuleInfo("//a:a_test", "py_test"),
        RuleInfo("//g:g_test", "py_test", frozenset({"gpu"})),
        RuleInfo("//i:image", "oci_image", frozenset({"mlenv_image", "manual"})),
        RuleInfo("//i:image_repro_test", "sh_test", frozenset({"mlenv_image_repro"})),
        RuleInfo("//m:m_test", "py_test", frozenset({"manual"})),
    )
    cpu_only = plan(selection, ["//lock:lock_test"], gpu=False, base_flags=["--config=ci"])
    assert [(lane.name, lane.verb, lane.flags, lane.targets) for lane in cpu_only.lanes] == [
        ("images", "build", ["--config=ci"], ["//i:image"]),
        ("cpu", "test", ["--config=ci"], ["//a:a_test", "//a:lib", "//g:g_test", "//i:image_repro_test", "//lock:lock_test"]),
    ]
    assert cpu_only.lanes[1].tests == ["//a:a_test", "//i:image_repro_test", "//lock:lock_test"]
    assert cpu_only.image_repro_tests == ["//i:image_repro_test"]
    assert any("GPU lane" in s and "//g:g_test" in s for s in cpu_only.skipped)
    assert any("manual" in s and "//m:m_test" in s for s in cpu_only.skipped)
    with_gpu = plan(selection, [], gpu=True, base_flags=["--config=ci"])
    assert (with_gpu.lanes[-1].name, with_gpu.lanes[-1].flags, with_gpu.lanes[-1].targets) == (
        "gpu", ["--config=ci", "--config=gpu"], ["//g:g_test"])


def test_everything_runs_the_full_suite_command():
    selection = selection_of(RuleInfo("//a:a_test", "py_test"), RuleInfo("//g:g_test", "py_test", frozenset({"gpu"})))
    selection.everything = True
    lanes = plan(selection, [], gpu=True, base_flags=["--config=ci"]).lanes
    assert [(lane.name, lane.targets) for lane in lanes] == [("cpu", ["//..."]), ("gpu", ["//..."])]


def test_nothing_affected_still_runs_the_lock_test():
    lanes = plan(Selection(), ["//third_party/pip:lock_test"], gpu=False, base_flags=[]).lanes
    assert [(lane.name, lane.targets) for lane in lanes] == [("cpu", ["//third_party/pip:lock_test"])]


def test_gather_junit_copies_shards_and_reports_missing(tmp_path):
    logs = tmp_path / "testlogs"
    (logs / "a/a_test").mkdir(parents=True)
    (logs / "a/a_test/test.xml").write_text("<testsuites/>")
    (logs / "s/s_test/shard_1_of_2").mkdir(parents=True)
    (logs / "s/s_test/shard_1_of_2/test.xml").write_text("<testsuites/>")
    missing = gather_junit(logs, ["//a:a_test", "//s:s_test", "//n:n_test"], tmp_path / "out")
    assert missing == ["//n:n_test"]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.xml")) == [
        "a/a_test/test.xml", "s/s_test/shard_1_of_2/test.xml"]


def test_marker_labels_mean_the_same_input_under_bazel_4_and_7():
    # Bazel 4.2.3 records `@//pkg:file` (or `//pkg:file`) and `@repo//`; Bazel 7 the canonical `@@//`, `@@repo//`.
    from ci.private.selection import _add_input, _Repository

    seen = []
    for main, other in (("//", "@mlenv_uv//"), ("@//", "@mlenv_uv//"), ("@@//", "@@mlenv_uv//")):
        repo = _Repository("pypi")
        _add_input(repo, f"{main}third_party/pip:requirements_lock_cpu.txt")
        _add_input(repo, f"{other}:uv")
        seen.append((repo.files, repo.repos))
    assert seen == [({"third_party/pip/requirements_lock_cpu.txt"}, {"mlenv_uv"})] * 3


def test_owners_nearest_file_wins_and_uncovered_paths_are_listed(tmp_path):
    from ci.private.owners import reviews

    (tmp_path / "ml/ads_ctr/sub").mkdir(parents=True)
    (tmp_path / "ml/OWNERS").write_text("# platform reviews what no project claims\n@mlenv/platform\n")
    (tmp_path / "ml/ads_ctr/OWNERS").write_text("@ads/ranking  # the team\n\nalice@example.com\n")
    got = reviews(tmp_path, ["ml/ads_ctr/model.py", "ml/ads_ctr/sub/x.py", "ml/engine/run.py", "README.md",
                             "ml/ads_ctr/gone.py"])
    assert [(r.owners_file, r.owners, r.paths) for r in got] == [
        ("ml/OWNERS", ("@mlenv/platform",), ["ml/engine/run.py"]),
        ("ml/ads_ctr/OWNERS", ("@ads/ranking", "alice@example.com"),
         ["ml/ads_ctr/model.py", "ml/ads_ctr/sub/x.py", "ml/ads_ctr/gone.py"]),
        (None, (), ["README.md"]),
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("@ads/ranking\nnot an owner\n", "ml/p/OWNERS:2: 'not an owner' is not an owner"),
    ("# nobody\n", "ml/p/OWNERS names no owner"),
])
def test_malformed_owners_file_names_file_line_and_fix(tmp_path, text, message):
    from ci.private.owners import OwnersError, reviews

    (tmp_path / "ml/p").mkdir(parents=True)
    (tmp_path / "ml/p/OWNERS").write_text(text)
    with pytest.raises(OwnersError, match=message):
        reviews(tmp_path, ["ml/p/model.py"])
