"""What serves a day: the policy rebuilt from its checkpoint, and the nightly serving tables."""
