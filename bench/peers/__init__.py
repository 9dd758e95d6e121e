"""The servers swin-serve is measured against: the naive FastAPI + PyTorch one, LitServe, and
this tree's own server at an earlier git revision (the baseline). None is part of the product."""
