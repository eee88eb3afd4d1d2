"""Pieces of the numpy MIL reference evaluator (see ``devices.mil_reference`` for the public API).

- ``values``: decode MIL proto values (immediate tensors, lists, weight-blob references) into numpy.
- ``ops``: the op table, one numpy function per MIL op type.
"""
