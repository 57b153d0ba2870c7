"""The web app of `captioner serve`: caption page, review page, JSON API."""
