"""The embedded toy world: 32x32 images with one shape, described by short prompts."""
