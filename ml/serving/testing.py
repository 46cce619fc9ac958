"""Test helpers: a small two-input model exported and bundled like a trained one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ml.engine.export import export_model
from ml.serving import bundle


class TinyRanker(torch.nn.Module):
    """ids int64 [B, 4] + dense float32 [B, 3] -> (score [B], prob [B]); `bias` tells versions apart."""

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 4)
        self.lin = torch.nn.Linear(7, 1)
        self.bias = bias

    def forward(self, ids: torch.Tensor, dense: torch.Tensor):
        h = torch.cat([self.emb(ids.clamp(0, 49)).mean(1), dense], dim=1)
        score = self.lin(h).squeeze(1) + self.bias
        return score, torch.sigmoid(score)


class SlowRanker(TinyRanker):
    """TinyRanker's outputs, computed slowly: `work` 256x256 matrix products (~1 ms each) whose result is added times 0.
    For tests that need requests still running (or queued behind a running batch) when something happens."""

    def __init__(self, bias: float = 0.0, work: int = 20) -> None:
        super().__init__(bias)
        self.register_buffer("m", torch.full((256, 256), 1 / 256))  # m @ m == m: stays finite however long
        self.work = work

    def forward(self, ids: torch.Tensor, dense: torch.Tensor):
        x = self.m
        for _ in range(self.work):
            x = x @ self.m
        zero = x[0, 0] * 0
        score, prob = super().forward(ids, dense)
        return score + zero, prob + zero


def example_inputs(rows: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 50, (rows, 4), generator=gen), torch.randn(rows, 3, generator=gen)


def make_bundle(root: Path, *, name: str = "tiny", version: str = "1", bias: float = 0.0,
                max_batch_size: int = 64, max_queue_delay_us: int = 2000, work: int = 0, onnx: bool = False) -> Path:
    """A bundle of TinyRanker (SlowRanker when `work` > 0) under root/name/version; with `onnx`, it carries
    the ONNX artifact too (the ONNX export takes seconds, so only tests of that path ask for it)."""
    export = root / f"export-{name}-{version}"
    model = SlowRanker(bias, work) if work else TinyRanker(bias)
    export_model(model, example_inputs(), input_names=["ids", "dense"], output_names=["score", "prob"], folder=export,
                 onnx=onnx)
    return bundle.write_bundle(export, root / name / version, name=name, version=version, label="//test:tiny",
                               lock_digest="sha256:test", git_commit="test", max_batch_size=max_batch_size,
                               max_queue_delay_us=max_queue_delay_us)


def rows(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random request rows for TinyRanker: ids int64 [n, 4], dense float32 [n, 3]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, (n, 4)).astype(np.int64), rng.normal(size=(n, 3)).astype(np.float32)


def expected(ids: np.ndarray, dense: np.ndarray, bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """TinyRanker's (score, prob) for these rows, computed in this process on CPU."""
    with torch.no_grad():
        score, prob = TinyRanker(bias)(torch.from_numpy(ids), torch.from_numpy(dense))
    return score.numpy(), prob.numpy()


def inputs_for(ids: np.ndarray, dense: np.ndarray, *, ids_name: str = "ids", ids_type: str = "INT64",
               dense_type: str = "FP32") -> list:
    """tritonclient.grpc InferInputs for TinyRanker (names and types overridable, to send wrong ones)."""
    import tritonclient.grpc as triton  # only the server tests have it

    a = triton.InferInput(ids_name, list(ids.shape), ids_type)
    a.set_data_from_numpy(ids)
    b = triton.InferInput("dense", list(dense.shape), dense_type)
    b.set_data_from_numpy(dense)
    return [a, b]


def check_concurrent_requests_batch(grpc_port: int, metrics_port: int, *, where: str = "") -> None:
    """48 requests of 1-5 rows from 16 threads to the served `tiny/1`: each gets its own rows' outputs, and the
    server's batch-size metric shows they ran in fewer than 48 batches (shared by the runtime/device tests)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as triton  # only the server tests have it

    def one(i):
        ids, dense = rows(1 + i % 5, seed=i)
        with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            got = client.infer("tiny", inputs_for(ids, dense))
        return (ids, dense), (got.as_numpy("score"), got.as_numpy("prob"))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    for (ids, dense), (score, prob) in results:
        want_score, want_prob = expected(ids, dense)
        np.testing.assert_allclose(score, want_score, rtol=0, atol=1e-5)
        np.testing.assert_allclose(prob, want_prob, rtol=0, atol=1e-5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()  # noqa: S310 - loopback
    batches = float(next(line.split()[-1] for line in text.splitlines()
                         if line.startswith('mlenv_batch_size_rows_count{model="tiny/1"}')))
    assert batches < 48, f"48 requests ran as {batches:.0f} batches{where}: nothing was batched"  # noqa: S101
