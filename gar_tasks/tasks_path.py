"""``python -m gar_tasks.tasks_path`` prints the folder to pass to ``lm_eval --include_path``."""

from .lm_eval_hook import tasks_dir

if __name__ == "__main__":
    print(tasks_dir())
