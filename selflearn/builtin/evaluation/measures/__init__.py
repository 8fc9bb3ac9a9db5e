"""The built-in evaluators (one plugin each): agreement, QA accuracy, pairwise judging,
forgetting and knowledge detection. Each is configured by keys of the ``evaluate`` section and
registered through the public ``register_evaluators`` hook, like a third party's."""
