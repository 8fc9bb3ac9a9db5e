"""Built-in trainers (heavy imports stay inside functions)."""
