"""Text to vectors: the sentence-transformers model, and its ONNX form."""
