"""twostep flows package."""
