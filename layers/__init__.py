"""Pure-functional Flax Linen building blocks, one concept per file.

Used as pure functions: ``params = module.init(rng, x)``, ``y = module.apply(params, x)``.
Parameters carry logical axis names (see :mod:`layers.partitioning`) that
``lm/train/sharding.py`` maps onto mesh axes.
"""
