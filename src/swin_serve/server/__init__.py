"""The server: ``swin-serve`` serves the models of a repository over HTTP and gRPC, from their
ONNX files alone (no torch). The transports (``http``, ``v2``) call one data plane
(``dataplane``), which leases models from the repository (``repository``) and runs them through
the runtime (``runtime``)."""
