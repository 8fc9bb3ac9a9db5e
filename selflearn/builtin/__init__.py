"""The built-in components, registered by :mod:`selflearn.builtin.plugin` like any plugin.

Convention: each component module exposes an attrs ``Options`` class and a factory
``create(options, context)``; module top levels import nothing heavy (torch, transformers),
so listing and validating components stays fast.
"""
