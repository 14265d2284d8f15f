"""Cove's prompt templates (the *.toml files beside this module), shipped as package data.

Kept as data, not code: each template has an id, a version every answer records, notes on why it
reads the way it does, and the reply markers the engine parses. `cove.prompts` loads them.
"""
