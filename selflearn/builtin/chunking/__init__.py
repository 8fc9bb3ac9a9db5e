"""Built-in chunking (heavy imports stay inside functions)."""
