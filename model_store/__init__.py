"""The demo model store (the [demo] extra): model definitions in plain torch, their archive
configs, weights made or read locally (never downloaded), real photos and sentences for the
inputs archives carry, and `torchserve-cpu build-archives`. Not needed to serve your own model."""
