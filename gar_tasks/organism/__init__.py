"""The model organism's recipe: a small Llama trained to solve GAR, shipped in ``gar_tasks/data/organism``.

Training needs torch and transformers, imported inside the functions that use them, so importing
this package stays cheap.
"""
