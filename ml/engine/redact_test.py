"""redact(): credentials never reach a log, and nothing else in the text changes; and the tracker's messages
and a training run's summary go through it (issue 16)."""

import pytest

from ml.engine.redact import redact


@pytest.mark.parametrize("raw,shown", [
    ("https://alice:s3cr3t@mlflow.example.com/api", "https://***@mlflow.example.com/api"),
    ("http://token@10.0.0.5:5000", "http://***@10.0.0.5:5000"),
    ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    ("--extra-index-url https://__token__:pypi-AgEI@pkgs.example/simple/ next",
     "--extra-index-url https://***@pkgs.example/simple/ next"),
    ("https://bucket.s3/x?X-Amz-Signature=abc123&keep=1", "https://bucket.s3/x?X-Amz-Signature=***&keep=1"),
    ("https://h/p?token=zzz", "https://h/p?token=***"),
    ("failed: API request to http://u:p@h:1/api/2.0 failed (user@example.com)",
     "failed: API request to http://***@h:1/api/2.0 failed (user@example.com)"),
])
def test_credentials_are_replaced(raw, shown):
    assert redact(raw) == shown


@pytest.mark.parametrize("clean", ["sqlite:////tmp/mlflow.db", "file:///home/me/mlruns", "https://pypi.org/simple",
                                   "http://127.0.0.1:5000", "git@github.com:org/repo.git", "no url here"])
def test_text_without_credentials_is_unchanged(clean):
    assert redact(clean) == clean


def test_the_tracker_redacts_the_server_url_in_its_offline_message(tmp_path):
    import mlflow

    from ml.engine.tracking import Tracker

    messages = []
    client = mlflow.MlflowClient("http://alice:s3cr3t@127.0.0.1:9")  # nothing listens on port 9
    tracker = Tracker(client, tmp_path / "run", experiment="e", run_name="r", log=messages.append)
    tracker.start({"lr": 0.1}, {})
    tracker.finish()
    text = "\n".join(messages) + (tracker.offline_reason or "")
    assert "s3cr3t" not in text and "alice" not in text, text
    assert messages, "the tracker did not report going offline"
