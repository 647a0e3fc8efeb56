"""The graph encoder, its objectives, pretraining, fine-tuning, checkpoints and the text encoder."""
