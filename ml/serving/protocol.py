"""The Open Inference Protocol (KServe v2) codec of mlenv's model server: datatype tables, request decoding
and response encoding, and the one error type a request can fail with.

Kept apart from the server so that its rules (what a request may carry, what each refusal says) are in one
place, without gRPC servers, threads or models: the service, the batcher and the benchmarks all share it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from ml.serving import bundle as bundles
from ml.serving.proto import inference_pb2 as pb

if TYPE_CHECKING:
    from ml.serving.repository import LoadedModel

__all__ = ["CONFIG_TYPES", "CONTENTS_FIELD", "DTYPES", "TORCH_TO_OIP", "InputSpec", "RequestError", "config_datatype",
           "decode_inputs", "encode_outputs", "input_spec", "oip_datatype"]

# Open Inference Protocol datatype <-> numpy
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
TORCH_TO_OIP = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
                "float32": "FP32", "float64": "FP64"}
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents"}
CONFIG_TYPES = {"BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
                "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12}


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code



@dataclass(frozen=True)
class InputSpec:
    """One input of a model's signature, resolved once at load so decoding a request does no lookups."""

    name: str
    datatype: str  # Open Inference Protocol name, e.g. FP32
    dtype: np.dtype  # little-endian, as the wire carries it
    shape: tuple[int, ...]  # -1: any size
    fixed: tuple[tuple[int, int], ...]  # (axis, size) for every axis that is not -1
    contents_field: str  # InferTensorContents field for clients that send typed values


def oip_datatype(t: dict) -> str:
    """The Open Inference Protocol datatype of a signature entry (its torch dtype name, e.g. float32 -> FP32)."""
    return TORCH_TO_OIP.get(t["dtype"], t["dtype"].upper())


def config_datatype(t: dict) -> int:
    """The ModelConfig DataType number of a signature entry; every datatype decode_inputs accepts has one."""
    datatype = oip_datatype(t)
    if datatype not in CONFIG_TYPES:
        raise RequestError(grpc.StatusCode.INTERNAL, f"tensor {t['name']}: dtype {t['dtype']} has no ModelConfig "
                                                     f"datatype; serve one of {', '.join(TORCH_TO_OIP)}")
    return CONFIG_TYPES[datatype]


def input_spec(t: dict) -> InputSpec:
    datatype = oip_datatype(t)
    if datatype not in DTYPES:
        raise bundles.BundleError(f"input {t['name']}: dtype {t['dtype']} cannot be served over the Open "
                                  f"Inference Protocol; use one of {', '.join(TORCH_TO_OIP)}")
    shape = tuple(int(d) for d in t["shape"])
    return InputSpec(t["name"], datatype, DTYPES[datatype].newbyteorder("<"), shape,
                      tuple((i, d) for i, d in enumerate(shape) if d != -1),
                      CONTENTS_FIELD.get(datatype, "bytes_contents"))



_LITTLE_ENDIAN = sys.byteorder == "little"
_OIP_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items()}


def decode_inputs(request: pb.ModelInferRequest, model: LoadedModel, max_rows: int) -> tuple[list[np.ndarray], int]:
    """The request's tensors as arrays in signature order, and its row count; RequestError names what is wrong.

    Raw contents become read-only views of the request's bytes (no copy here): the batcher copies them once,
    into the batch it hands the model, so the request's memory is never written."""
    tensors = request.inputs
    names = [t.name for t in tensors]
    order = None  # positions in the request of the signature's inputs, when the client used another order
    if names != model.input_names:
        expected = model.input_names
        missing = [n for n in expected if n not in names]
        unknown = [n for n in names if n not in model.input_index]
        duplicated = len(set(names)) != len(names)
        if missing or unknown or duplicated:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {model.bundle.name} takes inputs {expected}; missing {missing}, unknown "
                               f"{unknown}" + (", duplicated names" if duplicated else ""))
        order = [names.index(n) for n in expected]
    raw = request.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{len(raw)} raw_input_contents for {len(tensors)} inputs: send one per input")
    arrays: list[np.ndarray] = []
    rows = None
    for spec, i in zip(model.input_specs, order or range(len(tensors)), strict=True):
        tensor = tensors[i]
        if tensor.datatype != spec.datatype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {spec.name}: datatype {tensor.datatype}, the model expects {spec.datatype}")
        shape = tuple(tensor.shape)
        if len(shape) != len(spec.shape) or any(shape[axis] != size for axis, size in spec.fixed) or \
                (shape and min(shape) < 0):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {spec.name}: shape {list(shape)}, the model expects {list(spec.shape)} "
                               f"(-1 = any)")
        count = math.prod(shape)
        if raw:
            data = raw[i]
            if len(data) != count * spec.dtype.itemsize:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {spec.name}: {len(data)} bytes of raw contents, shape {list(shape)} of "
                                   f"{spec.datatype} needs {count * spec.dtype.itemsize}")
            array = np.frombuffer(data, dtype=spec.dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, spec.contents_field)
            if len(values) != count:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {spec.name}: {len(values)} values in contents, shape {list(shape)} "
                                   f"needs {count}")
            array = np.asarray(values, dtype=spec.dtype).reshape(shape)
        if rows is None:
            rows = shape[0] if shape else 0
        elif not shape or shape[0] != rows:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {spec.name} has {shape[0] if shape else 0} rows, other inputs {rows}: one "
                               f"batch size per request")
        arrays.append(array)
    if not rows or rows > max_rows:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch of {rows} rows; model {model.bundle.name} accepts 1..{max_rows} per request")
    return arrays, rows


def encode_outputs(request: pb.ModelInferRequest, model: LoadedModel, outputs: list[np.ndarray]
                    ) -> pb.ModelInferResponse:
    wanted = [o.name for o in request.outputs]
    tensors, contents = [], []
    for name, array in zip(model.output_names, outputs, strict=True):
        if wanted and name not in wanted:
            continue
        datatype = _OIP_OF_DTYPE.get(array.dtype.newbyteorder("="))
        if datatype is None:
            raise RequestError(grpc.StatusCode.INTERNAL, f"model {model.bundle.name} returned output {name} as "
                                                         f"{array.dtype}, which the protocol cannot carry")
        if not _LITTLE_ENDIAN:
            array = array.astype(array.dtype.newbyteorder("<"))
        tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape))
        contents.append(array.tobytes())  # row-major whatever the array's layout
    return pb.ModelInferResponse(model_name=model.bundle.name, model_version=model.bundle.version, id=request.id,
                                 outputs=tensors, raw_output_contents=contents)
