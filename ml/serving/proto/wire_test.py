"""Our inference.proto against the protocol's published definitions, as tritonclient ships them.

We write our own .proto (a subset); every message, field, enum value and RPC we declare must carry the
same name, number, type and cardinality as `inference.GRPCInferenceService` in tritonclient's
grpc_service.proto / model_config.proto, or standard clients would misread us on the wire.
"""

import pytest
import tritonclient.grpc.model_config_pb2  # noqa: F401 - registers the published definitions
import tritonclient.grpc.service_pb2  # noqa: F401
from google.protobuf import descriptor_pool

from ml.serving.proto import inference_pb2

PUBLISHED = descriptor_pool.Default()


def _messages(descriptors):
    for message in descriptors:
        yield message
        yield from _messages(message.nested_types)


def _enums(file):
    yield from file.enum_types_by_name.values()
    for message in _messages(file.message_types_by_name.values()):
        yield from message.enum_types


OURS = inference_pb2.DESCRIPTOR
MESSAGES = sorted(_messages(OURS.message_types_by_name.values()), key=lambda m: m.full_name)
ENUMS = sorted(_enums(OURS), key=lambda e: e.full_name)


def test_the_subset_is_not_empty():
    assert OURS.package == "inference"
    assert len(MESSAGES) > 25 and len(ENUMS) >= 2


@pytest.mark.parametrize("ours", MESSAGES, ids=lambda m: m.full_name)
def test_every_field_matches_the_published_protocol(ours):
    published = PUBLISHED.FindMessageTypeByName(ours.full_name)
    for field in ours.fields:
        theirs = published.fields_by_name.get(field.name)
        assert theirs is not None, f"{ours.full_name}.{field.name} is not in the published protocol"
        assert (field.number, field.type, field.label) == (theirs.number, theirs.type, theirs.label), \
            f"{ours.full_name}.{field.name}: ours (number, type, label) differs from the published one"
        ours_type = field.message_type or field.enum_type
        theirs_type = theirs.message_type or theirs.enum_type
        assert (ours_type and ours_type.full_name) == (theirs_type and theirs_type.full_name), field.full_name
        assert (field.containing_oneof and field.containing_oneof.name) == \
            (theirs.containing_oneof and theirs.containing_oneof.name), field.full_name


@pytest.mark.parametrize("ours", ENUMS, ids=lambda e: e.full_name)
def test_every_enum_value_matches(ours):
    published = PUBLISHED.FindEnumTypeByName(ours.full_name)
    for value in ours.values:
        assert published.values_by_name[value.name].number == value.number, value.full_name


def test_every_rpc_matches():
    ours = OURS.services_by_name["GRPCInferenceService"]
    theirs = PUBLISHED.FindServiceByName("inference.GRPCInferenceService")
    for method in ours.methods:
        published = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (published.input_type.full_name, published.output_type.full_name), method.name
        assert (method.client_streaming, method.server_streaming) == (False, False)
