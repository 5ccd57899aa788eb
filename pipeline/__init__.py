"""twostep pipeline package."""
