"""Honest numbers: training and differentiation speed against simple alternatives (``engine``), the Helmholtz
free-energy study (``helmholtz``) and the timing rules both follow (``timing``).

May import: ``gradfit.training`` and everything below it.
"""
