"""The decoders, their checkpoint format, loading a trained model, and exporting it."""
