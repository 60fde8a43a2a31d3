"""fedmammo: client package."""
