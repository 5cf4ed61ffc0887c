"""workbench: synthetic fine-tuning data, built in notebooks and proven on real held-out data.

A thin package of plain functions, one module per job; the numbered notebooks in notebooks/
are the pipeline and call into it.
"""

__version__ = "0.1.0"
