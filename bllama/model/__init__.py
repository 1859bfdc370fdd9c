"""The model: its config, the ternary BitLinear layer, the Transformer and PyTorch generation. Nothing here is
imported by `import bllama` except config.py, which is torch-free."""
