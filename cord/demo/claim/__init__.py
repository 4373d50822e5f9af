"""``cord demo`` (the default task): does CORD beat imitation where the paper makes its claim
(an imperfect text teacher, transfer, retention)? data → measure → task → verdict, report → run."""
