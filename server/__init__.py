"""fedmammo: server package."""
