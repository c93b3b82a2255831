"""Fine-tuning the default encoder on a collection's own images: edits, losses, the training
loop, validation, export. Imports torch; only `imagefinder finetune` needs it."""
