"""tiny-shapes: the procedural data, the detector and the tokenizer of the embedded default model."""
