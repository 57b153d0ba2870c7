"""Datasets: every caption format read into one record type, caption cleaning and the vocabulary."""
