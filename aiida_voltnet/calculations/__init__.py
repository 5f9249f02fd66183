"""Calculation functions: thin provenance-recording wrappers over ``aiida_voltnet.ml``."""
