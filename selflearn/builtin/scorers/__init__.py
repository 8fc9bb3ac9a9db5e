"""Built-in scorers (heavy imports stay inside functions)."""
