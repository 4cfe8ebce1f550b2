"""maskforge flows package."""
