"""The ``!function`` targets of the GAR YAML tasks: thin re-exports of ``gar_tasks.lm_eval_glue``."""

from gar_tasks.lm_eval_glue import (  # noqa: F401
    chat_doc_to_text,
    doc_to_choice,
    doc_to_label,
    doc_to_target,
    doc_to_text,
    load_docs,
    process_greedy,
)
