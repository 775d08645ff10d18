"""Fine-tuning a trained checkpoint: supervised (SFT) on instruction or chat records, or a
classification head on labelled records (``classify``)."""
