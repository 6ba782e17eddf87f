"""Data: the prompt loader and chat encoding, prompt sources (files, builtins, Hub datasets), splits, human labels.
No Ray; imports only rlaif.config."""
