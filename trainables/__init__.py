"""Ray Tune trainables for the routed multi-task soft-prompt model.

Importing this package is cheap: torch and transformers load only when a
submodule that needs them is imported.
"""
