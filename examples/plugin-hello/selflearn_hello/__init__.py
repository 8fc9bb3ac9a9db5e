"""An example selflearn plugin package (see README.md)."""
