"""persona.train: datasets -> the persona pack (likeness LoRA, fine-tuned voice)."""
