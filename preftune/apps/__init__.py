"""After training: the one generation path, `preftune chat`, `preftune ui` and `preftune merge`."""
