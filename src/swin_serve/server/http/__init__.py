"""The HTTP transport: the FastAPI app, its middleware, routes, schemas, uploads and web page."""
