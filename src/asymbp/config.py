"""What defines a run: the names typed once for every module that needs them.

(`TrainConfig`, its fields and their checks move here from train.py in the architecture change.)
"""

from __future__ import annotations

# How the reported number is picked (DESIGN §6): "paper" validates on the test split, "honest"
# holds a validation split out of the training set.
PROTOCOLS = ("paper", "honest")
