"""What the service loads at serve time, with no torch and no image decoding: artifact files and checksums, ONNX
Runtime sessions, the exported model's three graphs, the MiniLM text encoder, the FAISS index and the bundle reader.

The service image copies this package (with `model.schema`) and nothing else of `index`."""
