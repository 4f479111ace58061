"""Kernel tests run the Triton kernels in the interpreter on CPU tensors.

``TRITON_INTERPRET=1`` must be in effect when Triton itself is first imported (``triton.jit`` reads it when a
function, ``triton.language``'s own included, is defined). Importing transformers models makes torch import
Triton early, so set ``TRITON_INTERPRET=1`` in the environment of the test run (CI does); it is also set here
for runs of this folder alone. ``helpers.require_triton_interpreter`` skips the tests otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
