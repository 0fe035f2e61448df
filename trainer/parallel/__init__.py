"""Several processes under torchrun."""
