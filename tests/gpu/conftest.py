"""GPU tests: load Transformer Engine's libraries before torch loads its own cuDNN (the first SDPA call does):
the other order fails with "libcudnn_cnn.so.9: undefined symbol" on the lent H100/H200 image, whichever test
happens to run first. The jobs are safe: an FP8 run imports TE (yxanul.precision) before it runs the model."""

from __future__ import annotations

import contextlib

with contextlib.suppress(ImportError):  # without TE the FP8 tests fail on their own PrecisionError
    import transformer_engine.pytorch  # noqa: F401
