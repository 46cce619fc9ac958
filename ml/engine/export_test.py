"""Export: artifact + signature + golden batch, loaded back and checked, both formats."""

import json
import subprocess
import sys

import pytest
import torch

from ml.engine.errors import ExportError
from ml.engine.export import ONNX_OPSET, export_model


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(7, 2)

    def forward(self, ids, dense):
        h = torch.cat([self.emb(ids).mean(1), dense], dim=1)
        out = self.lin(h)
        return out[:, 0], out[:, 1]


def example():
    torch.manual_seed(0)
    return torch.randint(0, 10, (6, 5)), torch.randn(6, 3)


@pytest.mark.parametrize("fmt,artifact", [("torchscript", "model.pt"), ("torch_export", "model.pt2")])
def test_round_trip_in_a_fresh_process(tmp_path, fmt, artifact):
    model = TwoHeads()
    result = export_model(model, example(), input_names=["ids", "dense"], output_names=["a", "b"],
                          folder=tmp_path, fmt=fmt)
    assert result.artifact.name == artifact and result.max_abs_diff <= 1e-6
    signature = json.loads((tmp_path / "signature.json").read_text())
    assert signature["inputs"] == [{"name": "ids", "dtype": "int64", "shape": [-1, 5]},
                                   {"name": "dense", "dtype": "float32", "shape": [-1, 3]}]
    assert [o["name"] for o in signature["outputs"]] == ["a", "b"]
    code = ("import sys, torch; from pathlib import Path; from ml.engine.export import load_exported, load_golden\n"
            "f = Path(sys.argv[1]); m = load_exported(f); i, o = load_golden(f)\n"
            "got = m(*i); assert all(torch.equal(g, w) for g, w in zip(got, o)), 'mismatch'\n"
            "got = m(*(t[:1] for t in i)); assert got[0].shape == (1,)\nprint('ok')")
    proc = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_batch_dimension_that_is_not_dynamic_is_caught(tmp_path):
    class FixedBatch(torch.nn.Module):
        def forward(self, x):
            return x.reshape(6, -1).sum(1)  # bakes the example's batch size in

    with pytest.raises(ExportError):
        export_model(FixedBatch(), (torch.randn(6, 2),), input_names=["x"], output_names=["y"], folder=tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ExportError, match="2 input names for 1 example inputs"):
        export_model(TwoHeads(), (torch.zeros(2),), input_names=["a", "b"], output_names=["y"], folder=tmp_path)
    with pytest.raises(ExportError, match="needs >= 2 rows"):
        export_model(TwoHeads(), (torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 3)), input_names=["a", "b"],
                     output_names=["x", "y"], folder=tmp_path)
    with pytest.raises(ExportError, match="format 'onnx' is not one of"):
        export_model(TwoHeads(), example(), input_names=["a", "b"], output_names=["x", "y"], folder=tmp_path, fmt="onnx")


def test_the_onnx_artifact_is_written_next_to_the_main_one_and_matches_eager(tmp_path, monkeypatch):
    import onnx

    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")  # before ONNX Runtime loads, as the engine does
    import onnxruntime as ort

    model = TwoHeads()
    result = export_model(model, example(), input_names=["ids", "dense"], output_names=["a", "b"], folder=tmp_path)
    assert result.signature["artifacts"] == {"torchscript": "model.pt", "onnx": "model.onnx"}
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [ONNX_OPSET]
    assert not any(node.metadata_props for node in proto.graph.node), "source paths would make builds differ"
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, dense = (t[:3] for t in example())
    got = session.run(None, {"ids": ids.numpy(), "dense": dense.numpy()})  # a batch size not exported
    with torch.no_grad():
        want = model(ids, dense)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape) and abs(g - w.numpy()).max() < 1e-5
    first = (tmp_path / "model.onnx").read_bytes()
    export_model(model, example(), input_names=["ids", "dense"], output_names=["a", "b"], folder=tmp_path / "again")
    assert (tmp_path / "again" / "model.onnx").read_bytes() == first, "same model, different ONNX bytes"
    export_model(model, example(), input_names=["ids", "dense"], output_names=["a", "b"], folder=tmp_path, onnx=False)
    assert not (tmp_path / "model.onnx").exists()
    assert json.loads((tmp_path / "signature.json").read_text())["artifacts"] == {"torchscript": "model.pt"}
