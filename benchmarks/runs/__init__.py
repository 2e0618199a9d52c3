"""Runnable benchmark recipes. Unlike the importable harness above them, these drive the exporter
(they are clients of the whole toolchain, like a release pipeline would be)."""
