# The official Triton image (24.10 ships Triton 2.51, the core Kiln tests with) plus `tokenizers`, which
# the repository's NAME_preprocess model imports in Triton's Python backend.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "tokenizers>=0.19"
