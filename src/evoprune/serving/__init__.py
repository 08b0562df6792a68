"""Serving formats and engines: GGUF export for llama.cpp (`gguf_export.export_gguf`), the llama.cpp
runner (`llamacpp`), and the other export formats. Modules are imported where used, so that the
optional engine is only needed by the commands that run it.
"""
