"""Model architectures in plain torch / transformers, importable by the archived model files."""
