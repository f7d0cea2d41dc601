"""The text recipe's own parts: tokenizer and n-gram features, models, batches, pretrained glue."""
