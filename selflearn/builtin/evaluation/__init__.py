"""Evaluation: QA accuracy on gold answers, QA loaders, forgetting through lm-evaluation-harness,
and the reports of the ``evaluate`` stage (heavy imports stay inside functions)."""
