"""Tokenizers: SentencePiece, byte-level BPE, chat templates, and rebuilding either from a GGUF file."""
