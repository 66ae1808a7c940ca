"""Data as training reads it: the samples table, LOSO folds, tensors and batches, macro frame pairs.

:mod:`.micro_table` (the ``ingest_micro`` table), :mod:`.loso` (folds, label budgets), :mod:`.tensors`
(images to tensors, augmentation), :mod:`.micro` (a samples table as tensors), :mod:`.macro` (streamed macro frames
and future-frame pairs for pre-training).
"""
