"""Formwork's core library: registry, runner, validation, cache, metrics, providers, config.

It imports neither ``training`` nor ``service``: those two are built on it.
"""
