"""``cord demo --task operands``: the in-domain test with a perfect text teacher (restating the
spoken operands). data → measure → task → report → run."""
