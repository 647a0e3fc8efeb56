"""unirec-dagster: raw interaction logs to graph-based recommendations, orchestrated by Dagster."""

import warnings

# The encoder, the co-purchase and RP3beta neighbours use torch's sparse CSR tensors on purpose
# (2-3x faster products here); torch says once per process that they are "in beta". Silenced for
# every entry point (the Dagster steps, the torchrun workers, the benches), not in one module.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

__version__ = "0.1.0"
