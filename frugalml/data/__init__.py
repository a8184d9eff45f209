"""The data stages: reading labeled images safely and preparing them.

Owns where images come from (``sources``: folders, archives, S3; ``builtin``: the generated
datasets; ``dvcconf``: DVC's remotes for them), decoding (``images``), tar shards (``shards``),
the ingest stage (``ingestion``) and the validate stage (``validation``: Great Expectations).

Imports: ``frugalml.core`` and ``frugalml.contracts`` only.
"""
