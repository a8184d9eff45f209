"""The core: what every other package stands on.

Owns the typed config (``params.yaml``: ``config``, and its reference ``paramsdoc``), the S3 store
(``store``: boto3 only here; ``embedded``: the SeaweedFS server), the model registry in the store
(``registry``), the cost meter and price sheet (``costs``), every chart (``charts``: matplotlib),
the architectures the config accepts (``archs``), and the plumbing: errors, atomic writes
(``fsutil``), the console, workspace locks, child processes (``procs``), file hashes (``lineage``).

Imports: nothing of frugalml above it (``frugalml.contracts`` is its peer). Never Prefect, tasks
or flows.
"""
