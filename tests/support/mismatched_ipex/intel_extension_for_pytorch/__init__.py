"""Stand-in for intel_extension_for_pytorch 2.8.0 imported under another torch.

The real one prints an error and calls `os.exit(127)`, which does not exist, so its import
raises AttributeError; this does the same without the 50 MB wheel.
"""

print("ERROR! Intel Extension for PyTorch (test stand-in) needs PyTorch 2.8.*")
raise AttributeError("module 'os' has no attribute 'exit'")
