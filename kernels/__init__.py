"""Pure compute: numba kernels over numpy arrays and scalars only."""
