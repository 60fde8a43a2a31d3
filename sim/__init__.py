"""fedmammo: sim package."""
