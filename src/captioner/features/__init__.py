"""What the frozen encoder sees: the encoder registry, the feature cache, and features computed live."""
