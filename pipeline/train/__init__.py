"""Training (DESIGN §4, §5): one loop, MA2MI pre-training, LOSO fine-tuning and the final models.

:mod:`.engine` (the loop, checkpoints, curves), :mod:`.distributed` (DDP on one machine), :mod:`.pretrain` and
:mod:`.pretrain_ddp` (MA2MI), :mod:`.finetune` (one fold, one seed), :mod:`.fold_run` (one training run of a fold
stage), :mod:`.final` (one model per arm on every subject, and its card).
"""
