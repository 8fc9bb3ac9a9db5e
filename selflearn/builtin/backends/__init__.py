"""Built-in backends (heavy imports stay inside functions)."""
