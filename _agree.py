import sys
sys.path.insert(0, "tests")
import torch
import test_trl_integration as t
from helpers import rel_err
torch.set_num_threads(1)
worst = {}
for case in t.CASES:
    kw, shape = case.values
    for beta in t.BETAS:
        inputs = t._inputs(**shape)
        ref = t._run(t.TRL_LOSS, inputs, beta, **kw)
        out = t._run(t.cord_trl.chunked_divergence_loss, inputs, beta, **kw)
        for name, o, r in zip(("loss", "entropy", "n", "grad_h", "grad_W", "grad_b"), out, ref):
            if r is not None:
                e = rel_err(o, r)
                if e > worst.get(name, (0,))[0]:
                    worst[name] = (e, case.id, beta)
for k, v in worst.items(): print(k, f"{v[0]:.2e}", v[1], v[2])
