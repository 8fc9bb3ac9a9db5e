"""Built-in sources (heavy imports stay inside functions)."""
