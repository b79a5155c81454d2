"""Avro schemas (``*.avsc``, the wire contract) and their single-object codec.

See ``docs/SCHEMAS.md``. The public API lives in :mod:`schemas.codec`.
"""
