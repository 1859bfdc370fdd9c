"""Model file conversion: the torch-free GGUF schema, GGUF export, and Hugging Face import and export."""
