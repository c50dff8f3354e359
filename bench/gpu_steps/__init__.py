"""The steps of the GPU check (bench/gpu.py): ``builtin`` (step 1), ``llama`` (step 2),
``speed`` (step 3); ``record`` (the result file, the budget), ``data`` (what travels to the
device and how), ``random_model`` (random-weight checkpoints built on the device)."""
