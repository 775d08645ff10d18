"""Supervised fine-tuning (SFT) of a trained checkpoint on instruction or chat records."""
