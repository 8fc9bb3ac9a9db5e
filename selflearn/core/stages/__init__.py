"""Pipeline stages, one module each (imported lazily by the pipeline)."""
