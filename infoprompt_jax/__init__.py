"""InfoPrompt soft prompt tuning in JAX/Flax."""
