"""Built-in judges (heavy imports stay inside functions)."""
