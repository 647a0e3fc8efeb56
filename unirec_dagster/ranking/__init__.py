"""How a user's candidate items are scored and ranked: the simple signals, the blended score and
blocked top-K. Shared by the evaluation and by serving, which do not import each other."""
