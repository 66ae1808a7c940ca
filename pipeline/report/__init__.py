"""The run's offline HTML report (DESIGN §10).

:mod:`.html` (the page), :mod:`.pretrain_examples` (what MA2MI learnt, on held-out macro frame pairs).
"""
