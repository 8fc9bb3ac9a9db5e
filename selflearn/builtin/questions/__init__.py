"""Built-in questions (heavy imports stay inside functions)."""
