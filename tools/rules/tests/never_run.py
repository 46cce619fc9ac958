def test_never_run():  # fixture of an analysis test: the targets using it never build
    raise AssertionError("analysis-test fixture must not run")
