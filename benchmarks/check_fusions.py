"""Do the fusions find what torch really exports? Small PyTorch modules, exported with the
TorchScript exporter at several opsets, through ``-O2`` with ``--verify-each``.

Built independently of the unit tests (which spell the patterns by hand): a BERT-style layer
(nn.LayerNorm, nn.GELU exact and tanh, attention written out or through
F.scaled_dot_product_attention, a padding mask) at opsets 14 (LayerNorm decomposed) and 17;
an RMSNorm written with torch.rsqrt; a CNN with BatchNorm after Conv, ConvTranspose and Linear,
F.hardswish and x * F.hardsigmoid(x), exported with and without torch's constant folding.
Prints, per model, the node count before/after, the opset after, the max abs difference of
onnxruntime outputs and the fused ops found; exits 1 if an expected op is missing.

    python benchmarks/check_fusions.py        (needs torch, see README.md)
"""

from __future__ import annotations

import collections
import io
import sys
import warnings


def main() -> int:
    import numpy as np
    import onnx
    import torch
    import torch.nn.functional as F
    from torch import nn

    import lepton_opt
    from lepton_opt.evaluation.accuracy import ort_session, random_feeds
    from lepton_opt.passes.base import input_specs

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    class Layer(nn.Module):
        def __init__(self, gelu: str, sdpa: bool, d: int = 64, heads: int = 4):
            super().__init__()
            self.heads, self.sdpa = heads, sdpa
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate=gelu), nn.Linear(4 * d, d))

        def forward(self, x, mask):
            b, s, d = x.shape
            q, k, v = (p(x).view(b, s, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
            bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
            if self.sdpa:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            else:
                a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias, -1) @ v
            x = self.ln1(x + self.o(a.transpose(1, 2).reshape(b, s, d)))
            return self.ln2(x + self.ffn(x))

    class RMSNorm(nn.Module):
        def __init__(self, d: int = 64):
            super().__init__()
            self.w = nn.Parameter(torch.rand(d) + 0.5)

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.up, self.bn2 = nn.ConvTranspose2d(8, 8, 2, stride=2), nn.BatchNorm2d(8)
            self.fc, self.bn3 = nn.Linear(8, 10), nn.BatchNorm1d(10)

        def forward(self, x):
            x = F.hardswish(self.bn1(self.conv(x)))
            y = self.bn2(self.up(x))
            return self.bn3(self.fc((F.hardsigmoid(y) * y).mean((2, 3))))

    def export(module, args, names, opset, fold=True):
        module.eval()
        for m in module.modules():  # non-trivial statistics, so a wrong fold shows
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        buffer = io.BytesIO()
        torch.onnx.export(module, args, buffer, input_names=names, opset_version=opset, dynamo=False,
                          do_constant_folding=fold)
        return onnx.load_from_string(buffer.getvalue())

    x = torch.randn(2, 16, 64)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    transformer = {"LayerNormalization": 2, "Gelu": 1, "Attention": 1}
    cases = [(f"layer opset {opset}, GELU {gelu}, {'sdpa' if sdpa else 'written out'}",
              export(Layer(gelu, sdpa), (x, mask), ["x", "attention_mask"], opset), transformer)
             for opset in (14, 17) for gelu in ("none", "tanh") for sdpa in (False, True)]
    cases.append(("RMSNorm with rsqrt, opset 17", export(RMSNorm(), (x,), ["x"], 17), {"RMSNormalization": 1}))
    cnn = {"BatchNormalization": 0, "HardSwish": 2, "Conv": 1, "ConvTranspose": 1, "Gemm": 1}
    for fold in (False, True):
        cases.append((f"CNN opset 17, constant folding {'on' if fold else 'off'}",
                      export(CNN(), (torch.randn(2, 3, 8, 8),), ["x"], 17, fold), cnn))

    failed = 0
    for name, model, expected in cases:
        result = lepton_opt.optimize(model, "O2", verify_each=True)
        onnx.checker.check_model(result.model, full_check=True)
        found = collections.Counter(n.op_type for n in result.model.graph.node)
        feeds = random_feeds(input_specs(result.ir_model), seed=0)
        before = ort_session(model).run(None, feeds)
        after = ort_session(result.model).run(None, feeds)
        err = max(float(np.abs(a - b).max()) for a, b in zip(before, after))
        ok = all(found.get(op, 0) == n for op, n in expected.items()) and err <= 1e-4
        failed += not ok
        shown = {op: found.get(op, 0) for op in expected}
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {result.nodes_before} -> {result.nodes_after} nodes, "
              f"opset {result.model.opset_import[0].version}, max abs diff {err:.1e}, {shown}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
