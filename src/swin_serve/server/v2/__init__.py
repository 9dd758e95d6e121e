"""The Open Inference Protocol (KServe v2), over HTTP (``http_routes``) and gRPC (``grpc_server``).

Both transports parse into the same tensors (``tensors``) and ask the one data plane
(``swin_serve.server.dataplane``), which has ``infer`` validate them against the served model and
runs them through the batcher the rest of the API uses.
"""
