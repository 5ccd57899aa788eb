"""The 2-step student: generators, discriminator, losses, checkpoints and the training loop."""
