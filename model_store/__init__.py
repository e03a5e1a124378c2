"""Model definitions, archive configs and the script that builds the .mar files."""
