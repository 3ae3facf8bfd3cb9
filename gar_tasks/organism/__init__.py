"""The model organism's recipe: a small Llama trained to solve GAR, shipped in ``gar_tasks/data/organism``.

``data`` builds the training examples and the tokenizer, ``drills`` the association drills (the
forms as a table), ``options`` one run's options and their checks, ``training`` the loop,
``record`` the training record and the lineage, ``recipe`` the replay of a lineage phase by phase
(``recipe.json``: the shipped one), ``drill_eval`` the drill accuracy of a model; ``cli`` is
``gar organism train | eval``.

Training needs torch and transformers, imported inside the functions that use them, so importing
this package stays cheap.
"""
