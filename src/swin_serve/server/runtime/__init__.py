"""Running a model: the engines (ONNX Runtime, OpenVINO), their precision and CPU layout, the
batcher, the decode threads and the golden self-check of a loaded engine."""
