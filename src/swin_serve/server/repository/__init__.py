"""The served models: the files in the repository, the one registry of names, and the loader that fills it."""
