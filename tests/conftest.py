"""Test configuration shared by every module.

The finder works on tiny batched tensors; with several intra-op threads on a shared two-core machine the
thread hand-offs dominate and runtimes vary by 10x or more between runs (measured: one search of 10 models
took 0.4 s with 1 thread and 5.5 s with 2 threads under load).  One thread keeps the suite fast and its
timing stable; results do not depend on it.
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

# `from problems import ...` works however pytest is invoked (tests/ has no __init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
