"""Test-wide settings."""

import os

import torch

# Tests run tiny models where thread start-up costs more than it saves; on a shared 2-core machine
# two threads per process make small ops many times slower. Subprocesses inherit the variables.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
