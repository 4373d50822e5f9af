"""What the three families share: the options contract, argument checks, implementation
dispatch, row launch configs, reductions, the CORD token weights and the eager torch path."""
