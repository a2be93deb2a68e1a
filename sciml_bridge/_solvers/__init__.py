"""One module per family of `method=` backends, plus the fused driver they share."""
