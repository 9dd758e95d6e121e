"""The served models: the files in the repository, the one registry of names, and the loader that
asks it to change.

- ``files``: which files are models, their names, one read of a file, whether it changed;
- ``models``: one served model (engine, batcher, self-check, leases) and its warm-up;
- ``registry``: every name and its state; the only code that changes them, and what routes ask;
- ``loader``: when loads run (start-up, SIGHUP, polling, one at a time), by way of
  ``startup`` (the models a server starts with), ``sync`` (one reload's look at the files),
  ``loading`` (one load and what its outcome asks of the registry), ``opening`` (a file to a
  model), ``listings`` (one look at the files), ``retire`` (an old model's last steps) and
  ``tasks`` (the background tasks they start).
"""
