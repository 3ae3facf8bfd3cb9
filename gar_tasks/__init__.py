"""GAR toolkit: generator, records, Hub datasets and lm-eval glue."""
