"""The C generator: one Jinja environment, C-literal helpers, and the lowering of a QuantizedModel.

Public entry point: `generate_sources(model, out_dir, ...)` (codegen.generate).
"""

from codegen.generate import GeneratedSources, generate_sources

__all__ = ["GeneratedSources", "generate_sources"]
