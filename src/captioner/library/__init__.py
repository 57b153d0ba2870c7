"""A photo collection as a library: indexed once into SQLite, then searched by description, browsed and exported."""

from captioner.library.search import Filters, Library, SearchResults

__all__ = ["Filters", "Library", "SearchResults"]
