"""The gRPC service definition: the committed descriptor is the .proto's, and it is the wire
protocol Triton's client speaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from service.v2 import messages

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
    assert fresh == committed, "service/v2/open_inference.binpb is stale: run `make proto`"


def test_messages_match_tritons_definitions_field_for_field():
    """Every field of our messages has the number and type of Triton's own (which extends the
    protocol), so each side parses what the other writes."""
    from tritonclient.grpc import service_pb2

    def fields(descriptor):
        found = {}
        for field in descriptor.fields:
            found[field.name] = (field.number, field.type, field.is_repeated)
        for nested in descriptor.nested_types:
            if not nested.GetOptions().map_entry:
                for name, spec in fields(nested).items():
                    found[f"{nested.name}.{name}"] = spec
        return found

    service = messages._POOL.FindServiceByName(messages.SERVICE)
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        their_method = theirs.methods_by_name[method.name]
        for ours, their in (
            (method.input_type, their_method.input_type),
            (method.output_type, their_method.output_type),
        ):
            assert ours.full_name == their.full_name
            their_fields = fields(their)
            for name, spec in fields(ours).items():
                assert their_fields.get(name) == spec, (ours.full_name, name)
