"""Changed files -> the Bazel targets they affect, each with the reason it was selected.

Seeds (what a change touches) come from four sources, then `bazel query 'rdeps(//..., <seeds>)'` selects:
1. Workspace-wide files (ci/presubmit.json `workspace_files`, the files .bazelrc imports, WORKSPACE and every
   .bzl it loads) select EVERYTHING: they change how every target is configured or fetched.
2. Inputs of external repositories (a lock, the interpreter template): the FILE: lines Bazel records in
   `<output_base>/external/@<repo>.marker`, label attributes of `//external:*` rules, paths of local
   repositories, plus `repository_inputs` in ci/presubmit.json (inputs Bazel cannot see, e.g. the lock of
   another accelerator variant). A changed repository seeds `@repo//...` (so every target depending on the
   environment is selected), propagated to repositories built from it; a repository that no target reaches
   (a toolchain, a tool) or that holds toolchains selects everything.
3. BUILD and .bzl files seed `//pkg:all` of every package whose BUILD file loads them (`rbuildfiles`).
4. Any other file seeds its own file target (`//pkg:path`), if some target uses it. A deleted file (or the old
   path of a renamed one) no longer exists to query, so it seeds `//pkg:all` of the package that held it:
   every rule that could have listed or globbed it.
A toolchain rule among the selected targets selects everything (toolchain use is invisible to query).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ci.private.bazel import Bazel
from ci.private.changes import Change

__all__ = ["Config", "ConfigError", "RuleInfo", "Selection", "Selector"]

BUILD_NAMES = ("BUILD.bazel", "BUILD")
_LABEL = re.compile(r'"(@[\w.-]*//[^"]*|//[^"]*)"')
_LOAD = re.compile(r'load\(\s*"([^"]+)"')


class ConfigError(ValueError):
    """ci/presubmit.json is malformed (unknown key, wrong type)."""


@dataclass(frozen=True)
class Config:
    """ci/presubmit.json.

    always_test: tests run on every presubmit whatever changed (the lock freshness test).
    workspace_files: paths whose change selects everything (besides WORKSPACE, its .bzl loads, .bazelrc imports).
    repository_inputs: repository name -> workspace paths it reads that Bazel does not record (e.g. the lock of
      another accelerator variant).
    """

    always_test: tuple[str, ...] = ()
    workspace_files: tuple[str, ...] = ()
    repository_inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Config:
        data = json.loads(path.read_text())
        known = {"_doc", "always_test", "workspace_files", "repository_inputs"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known - {'_doc'})}")
        return cls(tuple(data.get("always_test", [])), tuple(data.get("workspace_files", [])),
                   {repo: tuple(paths) for repo, paths in data.get("repository_inputs", {}).items()})


@dataclass(frozen=True)
class RuleInfo:
    """One selected rule: label, rule class and tags (from `bazel query --output=xml`)."""

    label: str
    kind: str
    tags: frozenset[str] = frozenset()

    @property
    def is_test(self) -> bool:
        return self.kind.endswith("_test")


@dataclass
class Selection:
    """What presubmit selected.

    everything: True when a change affects every target (then `rules` is all of //...).
    seeds: seed expression -> why (the changes behind it).
    rules: selected rules of the main repository, by label.
    reasons: selected label -> the seed reason that reached it (for the summary).
    unused: changes that no target uses (docs, READMEs): they select nothing.
    """

    everything: bool = False
    seeds: dict[str, list[str]] = field(default_factory=dict)
    rules: dict[str, RuleInfo] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    def why_everything(self) -> list[str]:
        return self.seeds.get("//...", [])


@dataclass
class _Repository:
    name: str
    files: set[str] = field(default_factory=set)  # workspace paths it reads
    repos: set[str] = field(default_factory=set)  # other repositories it reads from
    local_path: str | None = None


class Selector:
    def __init__(self, workspace: Path, bazel: Bazel, config: Config):
        self.workspace, self.bazel, self.config = workspace, bazel, config

    # -- workspace-wide files ---------------------------------------------------------------------------

    def workspace_files(self) -> dict[str, str]:
        """Path -> why it is workspace-wide."""
        files = {path: "workspace-wide (ci/presubmit.json)" for path in self.config.workspace_files}
        for name in ("WORKSPACE", "WORKSPACE.bazel", ".bazelrc"):
            files[name] = "workspace-wide"
        for path in _bazelrc_imports(self.workspace, ".bazelrc"):
            files[path] = "imported by .bazelrc"
        for path in _starlark_loads(self.workspace, "WORKSPACE"):
            files[path] = "loaded by WORKSPACE (repository rules)"
        return files

    # -- external repositories --------------------------------------------------------------------------

    def repositories(self) -> dict[str, _Repository]:
        repos: dict[str, _Repository] = {}
        text = self.bazel.query("//external:*", "--output=build")
        for block in re.split(r"\n(?=# )", text):
            name = re.search(r'^\s*name = "([^"]+)"', block, re.M)
            if not name:
                continue
            repo = repos.setdefault(name.group(1), _Repository(name.group(1)))
            path = re.search(r'^\s*path = "([^"]+)"', block, re.M)
            if path and not path.group(1).startswith("/"):
                repo.local_path = path.group(1).rstrip("/")
            for label in _LABEL.findall(block):
                _add_input(repo, label)
        external = Path(self.bazel.info("output_base")) / "external"
        for marker in external.glob("@*.marker"):
            repo = repos.setdefault(marker.name[1:-len(".marker")], _Repository(marker.name[1:-len(".marker")]))
            for line in marker.read_text(errors="replace").splitlines():
                if line.startswith("FILE:"):
                    _add_input(repo, line[len("FILE:"):].split(" ")[0])
        for name, paths in self.config.repository_inputs.items():
            repos.setdefault(name, _Repository(name)).files.update(paths)
        return repos

    def _changed_repositories(self, paths: dict[str, str], repos: dict[str, _Repository]) -> dict[str, str]:
        changed: dict[str, str] = {}
        for repo in repos.values():
            for path, why in paths.items():
                if path in repo.files or (repo.local_path and (path + "/").startswith(repo.local_path + "/")):
                    changed.setdefault(repo.name, f"{why} (an input of repository @{repo.name})")
        queue = deque(changed)
        while queue:
            source = queue.popleft()
            for repo in repos.values():
                if source in repo.repos and repo.name not in changed:
                    changed[repo.name] = f"{changed[source]}, which @{repo.name} is built from"
                    queue.append(repo.name)
        return changed

    # -- packages ----------------------------------------------------------------------------------------

    def owning_package(self, path: str) -> str | None:
        parts = Path(path).parts[:-1]
        for depth in range(len(parts), -1, -1):
            folder = self.workspace.joinpath(*parts[:depth])
            if any((folder / name).is_file() for name in BUILD_NAMES):
                return "/".join(parts[:depth])
        return None

    # -- selection ---------------------------------------------------------------------------------------

    def select(self, changes: list[Change]) -> Selection:
        selection = Selection()
        wide = self.workspace_files()
        touched: dict[str, str] = {}  # every path a change touched -> its change description
        for change in changes:
            for path in change.paths_before() + change.paths_after():
                touched.setdefault(path, change.describe())
        for path, why in touched.items():
            if path in wide:
                selection.seeds.setdefault("//...", []).append(f"{why}: {wide[path]}")
        if selection.everything or "//..." in selection.seeds:
            return self._everything(selection)

        # Loading deps(//...) first fetches every repository a target reaches, so their markers exist.
        reachable = {line.split("//")[0][1:] for line in self.bazel.labels("deps(//...)", "--output=package")
                     if line.startswith("@")}
        repos = self.repositories()
        for name, why in sorted(self._changed_repositories(touched, repos).items()):
            if name not in reachable:
                selection.seeds.setdefault("//...", []).append(
                    f"{why}; no target reaches @{name} through deps (a toolchain or tool), so everything")
            elif self.bazel.labels(f"kind(toolchain, @{name}//...)"):
                selection.seeds.setdefault("//...", []).append(f"{why}; @{name} holds toolchains, so everything")
            else:
                selection.seeds.setdefault(f"@{name}//...", []).append(why)
        if "//..." in selection.seeds:
            return self._everything(selection)
        local_paths = [repo.local_path for repo in repos.values() if repo.local_path]

        candidates: dict[str, str] = {}  # //pkg:file -> why
        starlark: dict[str, str] = {}
        for change in changes:
            for path in change.paths_after():
                if any((path + "/").startswith(p + "/") for p in local_paths):
                    continue
                package = self.owning_package(path)
                if package is None:
                    selection.unused.append(f"{change.describe()}: in no package")
                    continue
                candidates[_label(package, path)] = change.describe()
                if path.endswith(".bzl") or Path(path).name in BUILD_NAMES:
                    starlark[path] = change.describe()
            for path in change.paths_before():
                package = self.owning_package(path)
                if package is not None:
                    selection.seeds.setdefault(f"//{package}:all", []).append(
                        f"{change.describe()}: {path} was in package //{package}; its rules may have used it")
                    candidates[_label(package, path)] = change.describe()

        if starlark:
            loaded_by = self.bazel.labels("rbuildfiles(%s)" % ", ".join(sorted(starlark)),
                                          "--universe_scope=//...", "--order_output=no")
            for build_file in loaded_by:
                package = build_file[2:].split(":")[0]
                selection.seeds.setdefault(f"//{package}:all", []).append(
                    "; ".join(sorted(set(starlark.values()))) + f": //{package} loads it (or is it)")
        if candidates:
            packages = sorted({label.split(":")[0] for label in candidates})
            existing = set(self.bazel.labels(" + ".join(f"{p}:*" for p in packages), keep_going=True))
            for label, why in sorted(candidates.items()):
                if label in existing:
                    selection.seeds.setdefault(label, []).append(why)
                elif not any(why in reasons for reasons in selection.seeds.values()):
                    selection.unused.append(f"{why}: no target uses it")
        if not selection.seeds:
            return selection
        return self._select_rdeps(selection)

    def _everything(self, selection: Selection) -> Selection:
        selection.everything = True
        selection.rules = self._rule_infos("//...")
        why = "; ".join(selection.why_everything())
        selection.reasons = {label: why for label in selection.rules}
        return selection

    def _select_rdeps(self, selection: Selection) -> Selection:
        seeds = " ".join(sorted(selection.seeds))
        universe = f"rdeps(//..., set({seeds}))"
        graph = self.bazel.query(universe, "--output=graph", "--nograph:factored")
        selection.reasons = _reasons_from_graph(graph, selection.seeds)
        selection.rules = self._rule_infos(f"{universe} intersect //...")
        # A toolchain's implementation is a nodep attribute, invisible to rdeps: check it explicitly.
        implementations = self._toolchain_implementations()
        toolchains = [label for label, info in selection.rules.items()
                      if info.kind == "toolchain" or label in implementations]
        if toolchains:
            selection.seeds.setdefault("//...", []).append(
                f"toolchain {toolchains[0]} depends on the change ({selection.reasons.get(toolchains[0], '')})")
            return self._everything(selection)
        return selection

    def _toolchain_implementations(self) -> set[str]:
        root = ET.fromstring(self.bazel.query("kind(toolchain, //...)", "--output=xml"))  # noqa: S314 - bazel query
        return {label.get("value") for rule in root.iter("rule") for label in rule.findall("label")
                if label.get("name") == "toolchain"}

    def _rule_infos(self, expression: str) -> dict[str, RuleInfo]:
        root = ET.fromstring(self.bazel.query(f"kind(rule, {expression})", "--output=xml"))  # noqa: S314 - bazel query
        infos = {}
        for rule in root.iter("rule"):
            tags = frozenset(s.get("value", "") for lst in rule.findall("list") if lst.get("name") == "tags"
                             for s in lst.findall("string"))
            infos[rule.get("name")] = RuleInfo(rule.get("name"), rule.get("class"), tags)
        return infos


def _label(package: str, path: str) -> str:
    return f"//{package}:{path[len(package) + 1:] if package else path}"


def _add_input(repo: _Repository, label: str) -> None:
    """Records a label a repository reads: a workspace file, or a file of another repository.

    Bazel 4.2.3 writes `@//pkg:file` or `//pkg:file` for the main repository and `@repo//...` for others;
    Bazel 7 writes canonical names, `@@//pkg:file` and `@@repo//...`: both spellings mean the same input."""
    if label.startswith("@@"):
        label = label[1:]
    if label.startswith("@") and not label.startswith(("@//", "@mlenv//")):
        other = label[1:].split("//")[0]
        if other and other != repo.name:
            repo.repos.add(other)
        return
    body = label.split("//", 1)[1]
    package, _, name = body.partition(":")
    repo.files.add(f"{package}/{name}".lstrip("/") if name else package)


def _bazelrc_imports(workspace: Path, rc: str, seen: set[str] | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    found = []
    path = workspace / rc
    if rc in seen or not path.is_file():
        return found
    seen.add(rc)
    for line in path.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("import", "try-import") and words[1].startswith("%workspace%/"):
            imported = words[1][len("%workspace%/"):]
            found += [imported, *_bazelrc_imports(workspace, imported, seen)]
    return found


def _starlark_loads(workspace: Path, file: str, seen: set[str] | None = None) -> list[str]:
    """Workspace .bzl files loaded, transitively, by `file` (a label-free textual scan of load() lines)."""
    seen = seen if seen is not None else set()
    found = []
    path = workspace / file
    if not path.is_file():
        return found
    package = str(Path(file).parent) if Path(file).parent != Path(".") else ""
    for label in _LOAD.findall(path.read_text()):
        if label.startswith("@") and not label.startswith(("@//", "@mlenv//")):
            continue  # another repository's file: covered by that repository's inputs
        if label.startswith(":"):
            target = f"{package}/{label[1:]}".lstrip("/")
        else:
            pkg, _, name = label.split("//", 1)[1].partition(":")
            target = f"{pkg}/{name}".lstrip("/")
        if target not in seen:
            seen.add(target)
            found += [target, *_starlark_loads(workspace, target, seen)]
    return found


def _reasons_from_graph(graph: str, seeds: dict[str, list[str]]) -> dict[str, str]:
    """Target -> the reason of a seed it depends on, by walking `--output=graph` edges backwards."""
    dependents: dict[str, list[str]] = {}
    nodes = set()
    for line in graph.splitlines():
        parts = re.findall(r'"([^"]+)"', line)
        nodes.update(parts)
        if len(parts) == 2 and "->" in line:
            dependents.setdefault(parts[1], []).append(parts[0])
    reasons: dict[str, str] = {}
    for seed, whys in sorted(seeds.items()):
        why = whys[0]
        start = [n for n in nodes if _matches(seed, n)]
        queue = deque(start)
        for node in start:
            reasons.setdefault(node, why)
        while queue:
            for parent in dependents.get(queue.popleft(), []):
                if parent not in reasons:
                    reasons[parent] = why
                    queue.append(parent)
    return reasons


def _matches(seed: str, node: str) -> bool:
    if seed.endswith("//..."):
        return node.startswith(seed[:-3])
    if seed.endswith(":all"):
        return node.split(":")[0] == seed[:-4]
    return node == seed
