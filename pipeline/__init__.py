"""The MA2MI pipeline's library: everything the DVC stages (``stages/``) call.

Nothing here downloads weights or data at run time: ``HF_HUB_OFFLINE`` defaults to 1 for every process that
imports the library (timm, which could reach the Hugging Face hub, is only ever imported through it).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
