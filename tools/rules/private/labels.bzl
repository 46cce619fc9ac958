"""Labels as text that every Bazel version writes the same way.

`str(label)` and `"%s" % label` of a main-repository label read `//pkg:name` under Bazel 4.2.3 but
`@//pkg:name` (or `@@//pkg:name`) under Bazel 7. What a rule writes into outputs (bundle.json, image
labels) and its error messages must not change with the Bazel version: outputs feed digests, messages feed
tests. Every rule formats labels with label_str().
"""

def label_str(label):
    """`//pkg:name` for the main repository, `@repo//pkg:name` for an external one."""
    repo = label.workspace_name
    return "%s//%s:%s" % ("@" + repo if repo else "", label.package, label.name)
