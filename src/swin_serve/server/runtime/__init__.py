"""Running a model: engines (ONNX Runtime, OpenVINO), precision and CPU layout, the batcher, the decode threads and the golden self-check of a loaded engine."""
