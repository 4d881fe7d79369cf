"""rlsft: why RL fine-tuning beats SFT, measured inside model pairs.

The package is organised one module per concept (see ../docs in the shared folder and README.md):
models, data, grading, templates, generate, cache, tracking, eap, grpo, probe, ablation, variability.
"""

__version__ = "0.1.0"
