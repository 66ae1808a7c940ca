"""Models of the MA2MI pipeline: MIACNet, MA2MI pre-training, and the MMNet and ResNet-18 baselines.

MIACNet is in :mod:`.miacnet`, MA2MI pre-training in :mod:`.ma2mi`, the MMNet (:mod:`.mmnet`) and ResNet-18
(:mod:`.resnet_diff`) baselines in their own modules; :mod:`.registry` builds a classifier by name.

This package file imports nothing, so a stage depends only on the model modules it uses (pre-training on MA2MI's,
not on the baselines').
"""
