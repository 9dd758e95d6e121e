"""The gRPC service definition: the committed descriptor is the .proto's, and it is the wire
protocol Triton's client speaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from swin_serve.server.v2 import messages

V2 = Path(messages.__file__).parent


def test_the_committed_descriptor_is_compiled_from_the_proto(tmp_path):
    out = tmp_path / "fresh.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{V2}",
            f"--descriptor_set_out={out}",
            "open_inference.proto",
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(
        (V2 / messages.DESCRIPTOR_FILE).read_bytes()
    )
    assert fresh == committed, (
        "src/swin_serve/server/v2/open_inference.binpb is stale: run `make proto`"
    )


# The protocol's optional model parameters, which Triton's definitions leave out: its clients
# skip the unknown field, so each one's number must be free in Triton's message.
PROTOCOL_ONLY = {
    ("ModelMetadataResponse", "parameters"),
    ("ModelMetadataResponse", "ParametersEntry.key"),
    ("ModelMetadataResponse", "ParametersEntry.value"),
}


def test_messages_match_tritons_definitions_field_for_field():
    """Every field of every message (nested ones too) has the number, type and message type of
    Triton's own (which extends the protocol), so each side parses what the other writes; and
    the service has the same methods on the same messages. A field of the protocol that Triton
    lacks takes a number no Triton field has."""
    from tritonclient.grpc import service_pb2

    def fields(descriptor):
        found = {}
        for field in descriptor.fields:
            kind = field.message_type.full_name if field.message_type else None
            found[field.name] = (field.number, field.type, field.is_repeated, kind)
        for nested in descriptor.nested_types:
            for name, spec in fields(nested).items():
                found[f"{nested.name}.{name}"] = spec
        return found

    ours = messages._POOL.FindFileByName("open_inference.proto")
    theirs = service_pb2.DESCRIPTOR
    assert ours.package == theirs.package == "inference"
    for name, message in ours.message_types_by_name.items():
        their_fields = fields(theirs.message_types_by_name[name])
        their_numbers = {n for key, (n, *_) in their_fields.items() if "." not in key}
        for field, spec in fields(message).items():
            if (name, field) in PROTOCOL_ONLY:
                assert field not in their_fields, (name, field)
                assert "." in field or spec[0] not in their_numbers, (name, field)
                continue
            assert their_fields.get(field) == spec, (name, field)
    their_service = theirs.services_by_name["GRPCInferenceService"]
    for method in ours.services_by_name["GRPCInferenceService"].methods:
        their_method = their_service.methods_by_name[method.name]
        assert method.input_type.full_name == their_method.input_type.full_name
        assert method.output_type.full_name == their_method.output_type.full_name
