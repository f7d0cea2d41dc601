"""Evaluation: gathered predictions and reports, the best model, the classic baseline."""
