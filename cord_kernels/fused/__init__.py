"""Hidden states in: the LM head streamed in vocabulary chunks, the logits never held."""
