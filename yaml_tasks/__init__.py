"""lm-eval YAML tasks of gar-eval (data only; ``gar_tasks.tasks_path`` prints this folder)."""
