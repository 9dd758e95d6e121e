"""The Open Inference Protocol (KServe v2), over HTTP (``http_routes``) and gRPC (``grpc_server``).

Both protocols parse into the same tensors (``tensors``), which ``infer`` validates against the
served model and runs through the one batcher the rest of the API uses.
"""
