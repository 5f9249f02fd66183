"""Parsers of aiida-voltnet."""
