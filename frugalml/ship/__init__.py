"""Shipping a model: is it good enough, in which form, and serving it.

Owns the evaluate stage (``evaluation``), the gates (``gates``), the compress stage's variants
(``variants``: fp32, int8, ONNX), the package stage (``packaging``, ``bento``) and the BentoML
service (``serving``).

Imports: ``frugalml.core``, ``frugalml.contracts``, ``frugalml.data`` and ``frugalml.model``.
"""
