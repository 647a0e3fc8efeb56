"""How a user's candidate items are scored and ranked: the simple signals, the blended score and
blocked top-K. Shared by training, serving and the evaluation, all above it (README's package map)."""
