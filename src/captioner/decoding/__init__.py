"""Image features -> captions: greedy, beam search and sampling, and the settings that choose among them."""
