"""Export: the distilled 2-step student as a diffusers pipeline folder."""
