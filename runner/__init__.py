"""pixrun: a batch runner for PixVerse video generation through the 302.AI gateway."""

__version__ = "0.1.0"
