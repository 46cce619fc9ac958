"""A minimal analysis-test rule for our own Starlark: asserts that a target FAILS analysis with a message.

    expect_failure_test(
        name = "gpus_zero_test",
        target_under_test = ":bad_gpus.gpu_spec",
        expected = ["gpus must be >= 1, got 0", "use ml_py_test"],
    )

The target is analysed with --allow_analysis_failures (via a transition), so its failure becomes data
(AnalysisFailureInfo) instead of breaking the build; the test passes when one failure message contains
every expected substring. Ours because bazel-skylib's analysistest cannot be fetched offline.
"""

_allow_failures = analysis_test_transition(
    settings = {"//command_line_option:allow_analysis_failures": "True"},
)

def _expect_failure_test_impl(ctx):
    target = ctx.attr.target_under_test
    if type(target) == "list":  # attributes with a transition arrive as a list
        target = target[0]
    if AnalysisFailureInfo not in target:
        return [AnalysisTestResultInfo(
            success = False,
            message = "expected %s to fail analysis with %s, but it succeeded" % (target.label, ctx.attr.expected),
        )]
    messages = [cause.message for cause in target[AnalysisFailureInfo].causes.to_list()]
    for message in messages:
        if all([part in message for part in ctx.attr.expected]):
            return [AnalysisTestResultInfo(success = True, message = message)]
    return [AnalysisTestResultInfo(
        success = False,
        message = "no failure of %s contains all of %s; got:\n%s" % (target.label, ctx.attr.expected, "\n".join(messages)),
    )]

expect_failure_test = rule(
    implementation = _expect_failure_test_impl,
    analysis_test = True,
    doc = "Passes when target_under_test fails analysis with a message containing every `expected` string.",
    attrs = {
        "expected": attr.string_list(mandatory = True, doc = "substrings one failure message must all contain"),
        "target_under_test": attr.label(mandatory = True, cfg = _allow_failures),
    },
)
