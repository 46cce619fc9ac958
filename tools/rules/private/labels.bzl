"""Labels as text that every Bazel version writes the same way.

`str(label)` and `"%s" % label` of a main-repository label read `//pkg:name` under Bazel 4.2.3 but
`@//pkg:name` (or `@@//pkg:name`) under Bazel 7. What a rule writes into outputs (bundle.json, image
labels) and its error messages must not change with the Bazel version: outputs feed digests, messages feed
tests. Every rule formats labels with label_str().

Under Bzlmod, an external repository's canonical name is not the name WORKSPACE gives it: the module
extension's `pypi` is `_main~mlenv~pypi` (`_main+mlenv+pypi` from Bazel 8), and the main repository's runfiles
folder is `_main`, not `mlenv`. repo_name() maps both back, so labels and image layouts do not depend on the mode.
"""

# The main repository's name (WORKSPACE's `workspace(name = ...)`, MODULE.bazel's `module(name = ...)`).
MAIN_REPO = "mlenv"

def repo_name(canonical):
    """The WORKSPACE name of a repository from its canonical name ('' stays '': the main repository)."""
    if canonical == "_main":
        return MAIN_REPO
    for sep in ("~", "+"):
        if sep in canonical:
            return canonical.rsplit(sep, 1)[1]
    return canonical

def label_str(label):
    """`//pkg:name` for the main repository, `@repo//pkg:name` for an external one."""
    repo = repo_name(label.workspace_name)
    return "%s//%s:%s" % ("@" + repo if repo else "", label.package, label.name)
