"""Issue 17: compare two runs of diff_probe.py (``diff_probe.py 2|1|ray OUT.pt 28,29``)."""

import sys

import torch

a, b = (torch.load(p, weights_only=True) for p in sys.argv[1:3])
print("threads", a["threads"], b["threads"], "omp", a["omp"], b["omp"])


def d(x, y):
    x, y = x.double(), y.double()
    m = (x - y).abs().max().item()
    return (
        f"max|d|={m:.3g} rel={m / max(y.abs().max().item(), 1e-30):.3g} equal={torch.equal(x, y)}"
    )


for kind in ("calib_in", "probe_in", "fisher_in_top"):
    for i in sorted(set(a[kind]) & set(b[kind])):
        print(kind, i, d(a[kind][i], b[kind][i]))
for g in sorted(set(a["hess"]) & set(b["hess"])):
    for k in a["hess"][g]:
        print("hess", g, k, d(a["hess"][g][k], b["hess"][g][k]))
for i in sorted(set(a["fisher"]) & set(b["fisher"])):
    for k in a["fisher"][i]:
        print("fisher", i, k, d(a["fisher"][i][k], b["fisher"][i][k]))
worst = {}
for k in a["entries"]:
    if k not in b["entries"]:
        continue
    for n, x, y in zip(("kl", "hessian", "fisher"), a["entries"][k], b["entries"][k], strict=True):
        r = abs(x - y) / max(abs(y), 1e-30)
        worst.setdefault(n, []).append((r, abs(x - y), k))
for n, v in worst.items():
    v.sort(reverse=True)
    same = sum(1 for r, _, _ in v if r == 0)
    print(
        f"entries {n}: {same}/{len(v)} identical; "
        f"max rel {v[0][0]:.3g} (abs {v[0][1]:.3g}) at {v[0][2]}"
    )
