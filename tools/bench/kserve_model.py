"""KServe's Python ModelServer serving a TorchScript file: the KServe side of tools/bench/serving_load.py.

Run by serving_load with the python of its own kserve virtualenv (never imported by us: kserve and
tritonclient must not share a process, kserve#3099). Stock kserve ModelServer; the model is a kserve.Model
whose (synchronous) predict takes the v2 InferRequest and returns an InferResponse, as kserve's custom-model
docs do. Two shims keep its sockets on loopback (kserve binds 0.0.0.0 / [::] itself); neither touches the
request path.
"""
import argparse
import logging

import grpc.aio
import numpy as np
import torch
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_model_server
from kserve.errors import InvalidInput
from kserve.protocol.grpc import server as kserve_grpc_server

_aio_server = grpc.aio.server


def _loopback_aio_server(*args, **kwargs):
    server = _aio_server(*args, **kwargs)
    add_port = server.add_insecure_port
    server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))
    return server


kserve_grpc_server.aio.server = _loopback_aio_server
_config_init = uvicorn.Config.__init__


def _loopback_config(self, *args, **kwargs):
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_config


class TorchScriptModel(Model):
    def __init__(self, name, path, inputs, outputs, device):
        super().__init__(name)
        self.path, self.input_names, self.output_names = path, inputs, outputs
        self.device = torch.device(device)
        self.module = None

    def load(self):
        self.module = torch.jit.load(self.path, map_location=self.device)
        self.module.eval()
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        given = {t.name: t for t in payload.inputs}
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise InvalidInput(f"missing inputs {missing}")
        tensors = [torch.from_numpy(np.array(given[n].as_numpy())).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*tensors)
        out = out if isinstance(out, (tuple, list)) else (out,)
        outputs = []
        for name, tensor in zip(self.output_names, out, strict=True):
            array = tensor.detach().cpu().numpy()
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--outputs", required=True)
    parser.add_argument("--torch_threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args, _ = parser.parse_known_args()
    torch.set_num_threads(args.torch_threads)
    model = TorchScriptModel(args.model_name, args.model_path, args.inputs.split(","), args.outputs.split(","),
                             args.device)
    model.load()
    server = ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, max_threads=args.max_threads,
                         enable_grpc=True, enable_latency_logging=False)
    # kserve logs every gRPC call at INFO (its LoggingInterceptor): keep only warnings, its fastest setting.
    logging.getLogger("kserve").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    print(f"torch threads {torch.get_num_threads()}, gRPC on 127.0.0.1:{args.grpc_port}", flush=True)
    server.start([model])
