"""The contract between the exporter and the server: the manifest, the image transform it
names, the golden answers and their tolerances, the ONNX Runtime session recipe and the CPU's
features. Imports neither torch nor FastAPI; ``export`` and ``server`` both import it, and never
each other."""
