"""Examples that ship with the package, so ``trainwarden demo`` and a Slurm job find them in
an install as well as in a checkout (``python -m trainwarden.examples.train``)."""
