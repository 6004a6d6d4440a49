"""Files that cross the trust boundary: tensors (safetensors), what a learn program returns,
uploaded program archives and datasets. Pure functions over paths and bytes, no HTTP; each
refusal is a typed error (a 400 when the file came with a request)."""
