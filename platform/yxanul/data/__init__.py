"""Data: the prepare pipeline (Ray Data) and the prepared dataset format (see docs/data.md).

Modules: ``decompose`` (pure decomposition/packing arithmetic), ``normalize`` (per-block cleaning and
the held-out split), ``tokenize`` (bounded batch encoding; the tokenizer actor), ``writer`` (part
files), ``prepare`` (plan, pipeline, manifest), ``bench`` (throughput benchmark), ``loader``
(training-side reader). Import the one you need; this package imports nothing heavy.
"""

from yxanul.data.decompose import Packer, bucket_lengths, chunk_lengths, decompose, pack

__all__ = ["Packer", "bucket_lengths", "chunk_lengths", "decompose", "pack"]
