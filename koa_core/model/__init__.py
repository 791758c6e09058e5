"""Model: the dual-stream network, its heads and its checkpoints (paper §2.4).

:mod:`.network` (ResNet-18 streams, cross-attention, gated fusion), :mod:`.ordinal` (the
CORN head), :mod:`.checkpoint` (safetensors + sidecar, never unpickled) and
:mod:`.inference` (the forward pass that turns views into probabilities and gates).

Rule (tests/test_layout.py):
Imports: koa_core, errors, config, files, paper, runtime.
"""
