"""Fine-tuning the default encoder on a collection's own images: edits, losses, the training
loop, validation, export. The training loop imports torch, which only `imagefinder finetune`
needs; the edits (`augment`) and the reading of indexed images (`data`) need only Pillow and
NumPy, and the core uses them too (the second-pass gate, reindexing)."""
